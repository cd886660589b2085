"""Training on several GPUs (or CPU processes) with torchrun.

Under ``torchrun --nproc_per_node=N`` every rank runs the same ``samx`` command. Rank 0, the
leader, runs it as usual: it reads the database, prepares the images, writes the model and
reports progress. The other ranks follow (``follow``): every fit the leader starts through
``run`` is sent to them as (function, arguments) and runs on all ranks at once, each on its
share of every epoch; DistributedDataParallel averages the gradients, so all ranks keep the same
weights, and the leader's copy is the model. Without torchrun (``WORLD_SIZE`` unset or 1)
nothing here does anything: one process, no process group."""
from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)
_STOP = "samx:stop"
TIMEOUT_ENV = "SAMX_DISTRIBUTED_TIMEOUT_MINUTES"  # how long followers wait for the leader's next fit


def requested() -> bool:
    """Started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_leader() -> bool:
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def start() -> None:
    """Join the process group torchrun describes in the environment: NCCL on GPUs, else gloo.
    The timeout is long because followers wait while the leader prepares images (minutes to
    hours on a first run over a large archive)."""
    if not requested() or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    minutes = float(os.environ.get(TIMEOUT_ENV, 24 * 60))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                            timeout=datetime.timedelta(minutes=minutes))
    log.info("rank %d of %d joined (%s)", rank(), world_size(), dist.get_backend())


def stop() -> None:
    """Leader: release the followers. Everyone: leave the process group."""
    if not dist.is_initialized():
        return
    if active() and is_leader():
        dist.broadcast_object_list([_STOP], src=0, device=_comm_device())
    if active():  # gloo aborts a rank that tears down while a peer still talks to it
        dist.barrier()
    dist.destroy_process_group()


def device(want: str = "auto") -> torch.device:
    """``auto``: this rank's GPU when there is one, else the CPU."""
    if want != "auto":
        return torch.device(want)
    return torch.device(f"cuda:{local_rank()}" if torch.cuda.is_available() else "cpu")


def _comm_device() -> torch.device | None:
    return torch.device(f"cuda:{local_rank()}") if dist.get_backend() == "nccl" else None


def run(fn: Callable, *args, local: dict | None = None, **kwargs) -> Any:
    """Call ``fn(*args, **kwargs, **local)`` here and, on the leader under torchrun, on every
    follower too (``local`` holds what stays here: progress callbacks, closures). ``fn`` must be
    importable by name (a module-level function or a bound method of a picklable object)."""
    if active() and is_leader():
        dist.broadcast_object_list([(fn, args, kwargs)], src=0, device=_comm_device())
    return fn(*args, **kwargs, **(local or {}))


def follow() -> None:
    """A follower's life: run each fit the leader sends, until it says stop."""
    while True:
        box = [None]
        dist.broadcast_object_list(box, src=0, device=_comm_device())
        if box[0] == _STOP:
            return
        fn, args, kwargs = box[0]
        log.info("rank %d: %s", rank(), getattr(fn, "__qualname__", fn))
        fn(*args, **kwargs)


def broadcast(obj: Any) -> Any:
    """The leader's ``obj`` on every rank (e.g. the pseudo-labels only the leader computes)."""
    if not active():
        return obj
    box = [obj if is_leader() else None]
    dist.broadcast_object_list(box, src=0, device=_comm_device())
    return box[0]


def total(*values: float) -> list[float]:
    """Sums over all ranks (losses and counts for the epoch log)."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device() or "cpu")
    dist.all_reduce(t)
    return t.tolist()


def wrap(model: nn.Module, dev: torch.device) -> nn.Module:
    """DistributedDataParallel under torchrun, the model itself otherwise. On GPUs the
    BatchNorm layers become synchronised ones (per-GPU batches are small), in place and with
    the same parameters, so an optimizer made earlier still holds them; their state dict and
    their eval-mode output are a plain BatchNorm's."""
    if not active():
        return model
    if dev.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return nn.parallel.DistributedDataParallel(model, device_ids=[dev.index])
    return nn.parallel.DistributedDataParallel(model)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def local_batch(batch_size: int) -> int:
    """Each rank's share of the batch, so the global batch (and the learning rate that goes
    with it) is the one configured; the whole batch in one process."""
    return batch_size if world_size() == 1 else max(2, batch_size // world_size())
