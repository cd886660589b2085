"""What the training loops of clustering/ and ml_backend/ share: one epoch of training
(``engine.train_one_epoch``, the epoch log, the progress callback), running on several GPUs
with torchrun (``distributed``), and the data splits (``splits``)."""
