"""``python -m backend.cli``: the ``samx`` command (torchrun and the compose services start it so)."""
from backend.cli import run

run()
