"""training.engine: the one epoch of training the detector, the abnormality classifier, the sorter
and DeepCluster share, on tiny real models; and the epoch logs their saved files keep."""
from __future__ import annotations

import math
from dataclasses import asdict, fields
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from training.engine import EpochLog, EpochResult, train_one_epoch


def toy_problem(n: int = 256, seed: int = 0) -> TensorDataset:
    """Two classes split by a line through the plane: a linear model can learn it perfectly."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    return TensorDataset(x, (x[:, 0] + 0.5 * x[:, 1] > 0).long())


def classify(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    logits = model(x)
    return nn.functional.cross_entropy(logits, y), {"correct": int((logits.argmax(1) == y).sum())}


def loader(data, batch_size: int = 32, seed: int = 0) -> DataLoader:
    return DataLoader(data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))


def test_a_tiny_classifier_learns_a_learnable_problem():
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    data = loader(toy_problem())
    runs = [train_one_epoch(model, opt, data, torch.device("cpu"), e, step=classify) for e in range(6)]
    assert all(isinstance(r, EpochResult) and r.steps == 8 and r.samples == 256 for r in runs)
    assert runs[-1].loss < 0.5 * runs[0].loss, [r.loss for r in runs]
    assert runs[-1].rates["correct"] > 0.95 and runs[-1].rates["correct"] > runs[0].rates["correct"]
    assert runs[0].parts == {}  # one loss: no parts
    # the trained weights, on the whole set, do better than the first epoch's mean
    x, y = data.dataset.tensors
    with torch.no_grad():
        assert nn.functional.cross_entropy(model(x), y).item() < runs[0].loss


def test_a_loss_dict_is_summed_for_backward_and_kept_per_part():
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # nothing moves: the parts are exact means

    def two_losses(m, x, y):
        out = m(x)
        return {"ce": nn.functional.cross_entropy(out, y, reduction="mean"), "l2": out.pow(2).mean()}

    data = toy_problem(64)
    run = train_one_epoch(model, opt, loader(data, 16), torch.device("cpu"), 0, step=two_losses)
    x, y = data.tensors
    with torch.no_grad():
        out = model(x)
        want = {"ce": nn.functional.cross_entropy(out, y).item(), "l2": out.pow(2).mean().item()}
    assert list(run.parts) == ["ce", "l2"]
    assert run.parts == pytest.approx(want, rel=1e-6)
    assert run.loss == pytest.approx(sum(want.values()), rel=1e-6) and run.loss == sum(run.parts.values())


def test_gradient_clipping_is_honoured():
    def huge(m, x, y):
        return 1e4 * nn.functional.cross_entropy(m(x), y)

    deltas = {}
    for clip in (None, 0.25):
        torch.manual_seed(0)
        model = nn.Linear(2, 2)
        before = [p.detach().clone() for p in model.parameters()]
        opt = torch.optim.SGD(model.parameters(), lr=1.0)  # one step moves the weights by the gradient
        data = DataLoader(toy_problem(32), batch_size=32)  # one batch: one step
        train_one_epoch(model, opt, data, torch.device("cpu"), 0, step=huge, grad_clip=clip)
        deltas[clip] = math.sqrt(sum(float((p.detach() - b).pow(2).sum()) for p, b in zip(model.parameters(), before)))
        grad_norm = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters()))
        assert grad_norm == pytest.approx(deltas[clip], rel=1e-5)  # the step used the gradient left behind
    assert deltas[0.25] == pytest.approx(0.25, rel=1e-4)
    assert deltas[None] > 100


def test_the_scheduler_steps_once_per_batch_and_stops_at_its_end():
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 / (1 + i))
    data = loader(toy_problem(80), 32)  # 32, 32, 16: three batches
    seen = []
    for epoch in range(2):
        run = train_one_epoch(model, opt, data, torch.device("cpu"), epoch, step=classify, scheduler=sched)
        seen.append((sched.last_epoch, run.lr))
    assert seen == [(3, pytest.approx(0.1 / 3)), (6, pytest.approx(0.1 / 6))]  # lr: the last step's, before it
    # a batch too small to train on takes no step, so no scheduler step either
    run = train_one_epoch(model, opt, data, torch.device("cpu"), 2, step=classify, scheduler=sched, min_batch=17)
    assert run.steps == 2 and run.samples == 64 and sched.last_epoch == 8

    # one-cycle: a schedule of fewer steps than the batches stays at its end instead of raising
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cycle = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=5)
    for epoch in range(2):
        train_one_epoch(model, opt, data, torch.device("cpu"), epoch, step=classify, scheduler=cycle)
    assert cycle.last_epoch == 4


def test_progress_counts_steps_over_the_whole_run():
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = loader(toy_problem(64), 32)
    calls, done = [], 0
    for epoch in range(2):
        done += train_one_epoch(model, opt, data, torch.device("cpu"), epoch, step=classify,
                                progress=lambda *a: calls.append(a), epochs=2, first_step=done, total_steps=4).steps
    assert [c[:2] for c in calls] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert calls[0][2].startswith("epoch 1/2, loss ") and calls[-1][2].startswith("epoch 2/2, loss ")


def test_every_optimizer_steps_and_non_finite_losses_stop_the_run():
    torch.manual_seed(0)
    body, head = nn.Linear(2, 4), nn.Linear(4, 2)
    model = nn.Sequential(body, head)
    opts = [torch.optim.SGD(body.parameters(), lr=0.1), torch.optim.SGD(head.parameters(), lr=0.1)]
    before = [p.detach().clone() for p in model.parameters()]
    train_one_epoch(model, opts, loader(toy_problem(32)), torch.device("cpu"), 0, step=classify)
    assert all(not torch.equal(p, b) for p, b in zip(model.parameters(), before))

    def nan(m, x, y):
        return {"a": nn.functional.cross_entropy(m(x), y), "b": torch.tensor(float("nan"))}

    with pytest.raises(FloatingPointError, match=r"loss is nan at epoch 3 \(\{'a': .*'b': nan\}\); lower lr"):
        train_one_epoch(model, opts, loader(toy_problem(32)), torch.device("cpu"), 2, step=nan)
    run = train_one_epoch(model, opts, loader(toy_problem(32)), torch.device("cpu"), 2, step=nan, check_finite=False)
    assert math.isnan(run.loss)


def test_the_sampler_is_told_the_epoch():
    class Recording(torch.utils.data.SequentialSampler):
        def __init__(self, data):
            super().__init__(data)
            self.epochs = []

        def set_epoch(self, epoch):
            self.epochs.append(epoch)

    data = toy_problem(8)
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sampler = Recording(data)
    for epoch in (0, 1, 5):
        train_one_epoch(model, opt, DataLoader(data, 4, sampler=sampler), torch.device("cpu"), epoch, step=classify)
    assert sampler.epochs == [0, 1, 5]


# -- the epoch logs in saved files -------------------------------------------------------------
def test_the_four_epoch_logs_read_what_the_earlier_code_saved():
    """Saved models keep ``[asdict(h) for h in history]``: the keys are those the trainers always
    wrote, and ``EpochLog(**h)`` reads them back."""
    from clustering.deepcluster import EpochLog as ClusterLog
    from clustering.sorter.model import EpochLog as SorterLog
    from ml_backend.models.abnormality import EpochLog as AbnormalityLog
    from ml_backend.models.detector import EpochLog as DetectorLog

    saved = {
        DetectorLog: {"epoch": 0, "loss": 1.5, "parts": {"loss_classifier": 1.0, "loss_box_reg": 0.5}, "lr": 0.02,
                      "seconds": 3.0, "val_map50": None},
        AbnormalityLog: {"epoch": 1, "loss": 0.6, "seconds": 2.0, "val_auroc": 0.9},
        SorterLog: {"epoch": 2, "loss": 0.7, "train_accuracy": 0.8, "seconds": 1.0},
        ClusterLog: {"epoch": 3, "loss": 1.2, "nmi_prev": None, "kmeans_objective": 4.5, "seconds": 9.0,
                     "extra": {"nmi_truth": 0.5}},
    }
    for cls, old in saved.items():
        assert issubclass(cls, EpochLog)
        assert {f.name for f in fields(cls)} == set(old), cls
        assert asdict(cls(**old)) == old
    assert DetectorLog(epoch=0, loss=1.0, parts={}, lr=0.1, seconds=1.0).val_map50 is None
    with pytest.raises(TypeError):  # by name only: the fields are not in the order they once were
        DetectorLog(0, 1.0, {}, 0.1, 1.0)


# -- under torchrun ---------------------------------------------------------------------------
def _rank(rank: int, world: int, init: str, out: Path) -> None:
    import torch.distributed as dist

    from training import distributed

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # the same weights on both ranks
        model = distributed.wrap(nn.Linear(2, 2), torch.device("cpu"))
        opt = torch.optim.SGD(model.parameters(), lr=0.0)  # nothing moves: the epoch's means are exact
        data = toy_problem(64)
        shard = TensorDataset(*(t[rank::world] for t in data.tensors))  # each rank its 32 samples
        run = train_one_epoch(model, opt, DataLoader(shard, 16), torch.device("cpu"), 0, step=classify)
        torch.save({"loss": run.loss, "rates": run.rates, "samples": run.samples, "steps": run.steps}, out / f"{rank}.pt")
        dist.barrier()  # gloo aborts a rank that tears down while its peer still talks to it
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_under_ddp_every_rank_reports_the_whole_epoch(tmp_path: Path):
    import torch.multiprocessing as mp

    mp.spawn(_rank, args=(2, f"file://{tmp_path / 'rendezvous'}", tmp_path), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f"{r}.pt") for r in (0, 1))
    assert r0["steps"] == r1["steps"] == 2 and r0["samples"] == r1["samples"] == 32  # each rank's own
    torch.manual_seed(0)
    x, y = toy_problem(64).tensors
    with torch.no_grad():
        loss, counts = classify(nn.Linear(2, 2), x, y)
    for r in (r0, r1):  # the whole epoch's means, on both ranks
        assert r["loss"] == pytest.approx(loss.item(), rel=1e-6)
        assert r["rates"] == {"correct": counts["correct"] / 64}
