"""What the training loops of clustering/ and ml_backend/ share: running on several GPUs with torchrun."""
