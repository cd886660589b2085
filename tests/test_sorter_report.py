"""The sorter's HTML report: every section present, numbers formatted, plots embedded, text escaped."""
from __future__ import annotations

import base64
import io
import re

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from clustering.sorter.report import render_report

CLASSES = ["hand", "knee", "<b>&"]
IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def _png() -> bytes:
    fig = Figure(figsize=(1, 1))
    fig.add_subplot().plot([0, 1])
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return buf.getvalue()


def _fold(i: int) -> dict:
    top1 = [0.90, 0.92, 0.94, 0.96, 0.98][i]
    recall = {"hand": 1.0, "knee": 0.95, "<b>&": float("nan") if i == 2 else 1.0}
    return {"index": i, "n_train": 180, "n_val": 60, "n_test": 60, "n": 60, "top1": top1, "top2": 1.0,
            "confusion": [[20, 0, 0], [1, 19, 0], [0, 0, 20]], "recall": recall,
            "coverage": 0.98, "accepted_top1": 0.97}


def make_meta() -> dict:
    folds = [_fold(i) for i in range(5)]
    return {
        "version": "a1b2c3d4e5f6", "created_at": "2026-11-23T10:00:00+00:00", "kind": "sorter",
        "classes": CLASSES, "counts": {"hand": 120, "knee": 100, "<b>&": 80}, "data_hash": "ab" * 32,
        "config": {"epochs": 20, "batch_size": 64, "lr": 0.05, "arch": "resnet18", "init": "deepcluster 3f2a"},
        "cv": {"folds": folds, "summary": {
            "top1": {"mean": 0.94, "sd": 0.0316, "values": [f["top1"] for f in folds]},
            "top2": {"mean": 1.0, "sd": 0.0, "values": [1.0] * 5},
            "coverage": {"mean": 0.98, "sd": 0.0, "values": [0.98] * 5},
            "accepted_top1": {"mean": 0.97, "sd": 0.0, "values": [0.97] * 5},
            "confusion": [[100, 0, 0], [5, 95, 0], [0, 0, 100]]}},
        "holdout": {"n": 60, "top1": 0.98, "top2": 1.0, "confusion": [[20, 0, 0], [1, 19, 0], [0, 0, 20]],
                    "recall": {"hand": 1.0, "knee": 0.95, "<b>&": 1.0}, "coverage": 0.98, "accepted_top1": 0.99},
        "abstention": {"k": 5, "threshold": 0.4217, "coverage": 0.99, "val_scores": [i / 100 for i in range(50)]},
        "history": [{"epoch": e, "loss": 1.2 / (e + 1), "train_accuracy": 0.5 + e / 40, "seconds": 3.1}
                    for e in range(20)],
        "previous": {"version": "0011aabb", "holdout_top1": 0.96},
        "promoted": True, "reason": "top-1 0.980 >= 0.960 of the active version 0011aabb",
    }


@pytest.fixture(scope="module")
def full_html() -> str:
    return render_report(make_meta(), [{"title": "image 42: true knee, predicted knee 0.97", "png": _png()},
                                       {"title": "image 7: true <b>&, predicted hand", "png": _png()}])


def test_all_sections_present_in_order(full_html):
    headings = ["Cross-validation", "Confusion matrix", "Fixed validation split", "Abstention",
                "Training curve", "Grad-CAM examples", "Config"]
    positions = [full_html.find(f"<h2>{h}</h2>") for h in headings]
    assert all(p >= 0 for p in positions), dict(zip(headings, positions))
    assert positions == sorted(positions)
    assert "a1b2c3d4e5f6" in full_html and "promoted" in full_html and "0011aabb" in full_html


def test_numbers_formatted(full_html):
    assert "0.940 ± 0.032" in full_html  # mean ± sd of top-1 over folds
    assert "0.4217" in full_html  # abstention threshold
    assert "k-th" in full_html and "0.990 of in-distribution validation images" in full_html
    assert "–" in full_html  # NaN recall shown as a dash
    assert ">nan<" not in full_html.lower()


def test_plots_and_examples_embedded_as_png(full_html):
    payloads = IMG.findall(full_html)
    # CV bars, confusion heatmap, abstention histogram, training curve, and the 2 examples
    assert len(payloads) == 6
    for payload in payloads:
        assert base64.b64decode(payload).startswith(b"\x89PNG")
    assert "image 42: true knee, predicted knee 0.97" in full_html
    assert "<script" not in full_html and "http" not in full_html


def test_text_escaped(full_html):
    assert "<b>&" not in full_html
    assert "&lt;b&gt;&amp;" in full_html


def test_minimal_meta_omits_missing_sections():
    meta = make_meta()
    for key in ("cv", "history", "previous"):
        meta.pop(key)
    html = render_report(meta)
    assert "Cross-validation" not in html and "Training curve" not in html and "Grad-CAM" not in html
    assert "<h2>Confusion matrix</h2>" in html and "fixed validation split" in html  # falls back to holdout
    assert len(IMG.findall(html)) == 2  # heatmap and abstention histogram
    meta["abstention"] = meta["holdout"] = meta["config"] = None
    assert "<h2>" not in render_report(meta)
