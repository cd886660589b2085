"""One epoch of training, for every network samx trains: the lesion detector, the abnormality
classifier, the sorter and DeepCluster. torchvision's references/detection/engine.py
``train_one_epoch``, with what those four need besides.

The trainer builds the model, the optimizer(s), the loader and the schedule, and calls
``train_one_epoch`` once an epoch; what differs between the networks is the ``step``, which
turns a batch into losses: a torchvision detection model returns a dict of them (summed for
the backward pass, each kept in the log), a classifier's step computes one from its outputs.
Augmentation and tiling belong to the dataset, so they run in DataLoader workers.

Under torchrun the model arrives wrapped in DistributedDataParallel (training.distributed.wrap),
each rank iterating its share of the epoch: the epoch's sums are then added over all ranks, so
every rank returns the means of the whole epoch. (A model trained on the leader alone, not
wrapped, sums nothing: the other ranks are not listening.)"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from training import distributed

Progress = Callable[[int, int, str], None]  # (steps done, steps in all, message)
Losses = torch.Tensor | Mapping[str, torch.Tensor]
#: ``step(model, inputs, targets)`` -> losses, or (losses, counts): a scalar loss or a dict of them
#: (detection models), and optionally numbers to add up over the epoch and divide by the number of
#: samples (e.g. {"correct": 12} -> the epoch's accuracy).
Step = Callable[[nn.Module, Any, Any], Losses | tuple[Losses, Mapping[str, float]]]


@dataclass(kw_only=True)
class EpochLog:
    """What every trainer logs per epoch; each adds its own fields in a subclass (loss parts and
    learning rate, validation scores, accuracy, k-means statistics). Saved models keep their
    history as ``asdict`` dicts, and ``SubClass(**d)`` reads them back."""

    epoch: int
    loss: float
    seconds: float


@dataclass
class EpochResult:
    """What ``train_one_epoch`` measured: means per sample, over all ranks under torchrun."""

    loss: float  # the summed losses' mean
    parts: dict[str, float] = field(default_factory=dict)  # each loss's mean, where the step returns a dict
    rates: dict[str, float] = field(default_factory=dict)  # each count the step returns, per sample
    lr: float = 0.0  # the first optimizer's (first parameter group's) at the last step of the epoch
    steps: int = 0  # optimizer steps taken (on this rank): batches smaller than ``min_batch`` take none
    samples: int = 0  # trained on (on this rank)
    seconds: float = 0.0


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
                    data_loader, device: torch.device, epoch: int, *, step: Step,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, grad_clip: float | None = None,
                    min_batch: int = 1, check_finite: bool = True, progress: Progress | None = None,
                    epochs: int | None = None, first_step: int = 0, total_steps: int | None = None) -> EpochResult:
    """One pass over ``data_loader``, whose batches are (inputs, targets) pairs, in place on
    ``model`` (put in train mode).

    Each batch: moved to ``device`` (tensors, and tensors in lists, tuples and dicts), skipped if
    it holds fewer than ``min_batch`` samples (BatchNorm cannot train on one), ``step`` -> losses,
    their sum back-propagated, gradients clipped to a total norm of ``grad_clip`` (if given, over
    the optimizers' parameters), every optimizer stepped, then ``scheduler`` (a per-batch schedule
    such as one-cycle; one that has reached its ``total_steps`` stays there), then
    ``progress(first_step + steps so far, total_steps, "epoch e/epochs, loss x")``. A loss that is
    not finite raises FloatingPointError (``check_finite``). A sampler with ``set_epoch``
    (DistributedSampler) is told the epoch first, so every epoch shuffles anew."""
    optimizers = [optimizer] if isinstance(optimizer, torch.optim.Optimizer) else list(optimizer)
    params = [p for opt in optimizers for group in opt.param_groups for p in group["params"]]
    sampler = getattr(data_loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    total_steps = total_steps or first_step + len(data_loader)
    title = f"epoch {epoch + 1}" + (f"/{epochs}" if epochs else "")
    t0, lr = time.perf_counter(), optimizers[0].param_groups[0]["lr"]
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    named, steps, samples = False, 0, 0
    model.train()
    for inputs, targets in data_loader:
        n = len(targets)
        if n < min_batch:
            continue
        out = step(model, to_device(inputs, device), to_device(targets, device))
        losses, batch_counts = out if isinstance(out, tuple) else (out, {})
        named = isinstance(losses, Mapping)
        loss = sum(losses.values()) if named else losses
        value = loss.item()
        if check_finite and not math.isfinite(value):
            shown = f" ({ {k: round(v.item(), 4) for k, v in losses.items()} })" if named else ""
            raise FloatingPointError(f"loss is {value} at epoch {epoch + 1}{shown}; lower lr")
        for opt in optimizers:
            opt.zero_grad()
        loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(params, grad_clip)
        for opt in optimizers:
            opt.step()
        lr = optimizers[0].param_groups[0]["lr"]
        if scheduler is not None:
            _advance(scheduler)
        steps += 1
        for k, v in (losses.items() if named else [("loss", losses)]):
            sums[k] = sums.get(k, 0.0) + v.item() * n
        for k, v in batch_counts.items():
            counts[k] = counts.get(k, 0) + v
        samples += n
        if progress:
            progress(first_step + steps, total_steps, f"{title}, loss {value:.3f}")
    names, count_names = list(sums), list(counts)  # the same, in the same order, on every rank
    total = [sums[k] for k in names] + [counts[k] for k in count_names] + [samples]
    if isinstance(model, nn.parallel.DistributedDataParallel):
        total = distributed.total(*total)
    *totals, all_samples = total
    means = {k: v / max(all_samples, 1) for k, v in zip(names + count_names, totals)}
    parts = {k: means[k] for k in names}
    return EpochResult(loss=float(sum(parts.values())), parts=parts if named else {},
                       rates={k: means[k] for k in count_names}, lr=lr, steps=steps, samples=samples,
                       seconds=time.perf_counter() - t0)


def _advance(scheduler) -> None:
    """One step of a per-batch schedule. torch's OneCycleLR raises past its ``total_steps``: it
    stays at its last rate instead."""
    last = getattr(scheduler, "total_steps", None)
    if last is None or scheduler.last_epoch + 1 < last:
        scheduler.step()


def to_device(batch, device: torch.device):
    """Tensors to ``device``, also inside lists, tuples (as lists) and dicts; anything else as is."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return [to_device(b, device) for b in batch]
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch
