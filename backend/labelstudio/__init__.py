"""Label Studio: run it (server.py), set up the lesion-boxing project and import our images as
tasks (config.py, sync.py). Label Studio itself lives in its own virtualenv (`make labelstudio`);
samx talks to it over HTTP only."""
