"""The learning-rate schedule both trainers use."""
from __future__ import annotations

import torch


def one_cycle(opt: torch.optim.Optimizer, max_lr: float, steps: int, warmup: float,
              cycle_momentum: bool = True) -> tuple[torch.optim.lr_scheduler.OneCycleLR, int]:
    """(OneCycleLR, its total steps), usable for a handful of steps too (a first training on four
    annotated images): torch's divides by zero when the warm-up is shorter than two steps."""
    total = max(3, steps)
    pct = min(0.5, max(warmup, 2.0 / total))
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=total, pct_start=pct,
                                               cycle_momentum=cycle_momentum), total
