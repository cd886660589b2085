# samx for docker-compose.yml: one image for the web app, the ML backend and the workers.
# CPU torch by default; for a GPU host build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 SAMX_DATA_DIR=/data

# torch/torchvision first, from the index that matches the hardware, pinned as in pyproject.toml.
RUN pip install --index-url "$TORCH_INDEX" torch==2.14.1 torchvision==0.29.1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY backend ./backend
COPY clustering ./clustering
COPY exports ./exports
COPY imaging ./imaging
COPY ml_backend ./ml_backend
COPY training ./training
RUN pip install . && useradd --create-home --uid 1000 samx && mkdir -p /data && chown samx /data

USER samx
VOLUME ["/data"]
EXPOSE 5000 9090
CMD ["samx", "serve", "--server", "gunicorn", "--host", "0.0.0.0", "--port", "5000"]
