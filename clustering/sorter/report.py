"""One self-contained HTML page per trained sorter version.

A radiologist deciding whether to trust a new sorter needs its evidence in one file they can open
anywhere, archive next to the model and mail around: cross-validation, confusion, holdout, how
abstention works, the training curve, Grad-CAM examples and the config. So plots are embedded as
base64 PNGs, there are no external assets and no JavaScript, and every piece of text is escaped.
Sections whose data is missing (e.g. no ``cv`` when trained with folds=0) are left out.
"""
from __future__ import annotations

import base64
import html
import io
import math

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


CSS = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
       "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
       "th{background:#f3f3f3}.grid{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0;width:300px}"
       "figure img{width:100%}.ok{color:#070}.bad{color:#b00}")
FOLD_KEYS = [("n_train", "train"), ("n_val", "val"), ("n_test", "test"), ("top1", "top-1"), ("top2", "top-2"),
             ("coverage", "coverage"), ("accepted_top1", "accepted top-1")]


def _e(value) -> str:
    return html.escape(str(value))


def _fmt(value, digits: int = 3) -> str:
    """Numbers rounded; None and NaN as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else _e(value)


def _table(header: list, rows: list[list]) -> str:
    """Cells are already-formatted HTML (or plain values, escaped here)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(fig: Figure, alt: str) -> str:
    """The figure as an inline PNG."""
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return _png_tag(buf.getvalue(), alt)


def _png_tag(png: bytes, alt: str) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}" alt="{_e(alt)}">'


def _header(meta: dict) -> str:
    promoted = meta.get("promoted")
    verdict = f'<b class="{"ok" if promoted else "bad"}">{"promoted" if promoted else "rejected"}</b>'
    lines = [f"<h1>Sorter {_e(meta.get('version', '?'))}</h1>",
             f"<p>Created {_e(meta.get('created_at', '?'))}. {verdict}: {_e(meta.get('reason', ''))}</p>",
             f"<p>Data hash <code>{_e(meta.get('data_hash', '?'))}</code></p>"]
    prev = meta.get("previous")
    if prev:
        lines.append(f"<p>Previous active version {_e(prev.get('version'))}, "
                     f"holdout top-1 {_fmt(prev.get('holdout_top1'))}</p>")
    counts = meta.get("counts") or {}
    lines.append(_table(["class", "training images"], [[_e(c), _e(n)] for c, n in counts.items()]))
    return "\n".join(lines)


def _cv(cv: dict) -> str:
    folds, summary = cv.get("folds") or [], cv.get("summary") or {}
    rows = [[_e(f.get("index", i))] + [_fmt(f.get(k)) for k, _ in FOLD_KEYS] for i, f in enumerate(folds)]
    rows.append(["mean ± sd"] + [f"{_fmt(summary[k]['mean'])} ± {_fmt(summary[k]['sd'])}" if k in summary else ""
                                 for k, _ in FOLD_KEYS])
    fig = Figure(figsize=(6, 3))
    ax = fig.add_subplot()
    x = range(len(folds))
    for shift, key in ((-0.2, "top1"), (0.2, "top2")):
        ax.bar([i + shift for i in x], [f.get(key) or 0 for f in folds], width=0.4, label=key)
    ax.set(xlabel="fold", ylabel="accuracy", ylim=(0, 1.2), xticks=list(x))
    ax.legend(loc="upper center", ncol=2)
    fig.tight_layout()
    return ("<h2>Cross-validation</h2>" + _table(["fold"] + [label for _, label in FOLD_KEYS], rows)
            + _img(fig, "top-1 and top-2 per fold"))


def _heatmap(matrix: list[list], classes: list[str]) -> Figure:
    n = len(classes)
    fig = Figure(figsize=(1.2 * n + 2, 1.0 * n + 1.5))
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    top = max((max(r) for r in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center", color="white" if count > top / 2 else "black")
    ax.set(xticks=range(n), yticks=range(n), xticklabels=classes, yticklabels=classes,
           xlabel="predicted", ylabel="true")
    fig.tight_layout()
    return fig


def _confusion(meta: dict) -> str:
    cv, holdout, classes = meta.get("cv"), meta.get("holdout"), meta.get("classes") or []
    if cv and (cv.get("summary") or {}).get("confusion"):
        matrix, source, recalls = cv["summary"]["confusion"], "summed over cross-validation folds", cv["folds"]
        header = ["class"] + [f"fold {f.get('index', i)}" for i, f in enumerate(recalls)]
    elif holdout and holdout.get("confusion"):
        matrix, source, recalls = holdout["confusion"], "fixed validation split", [holdout]
        header = ["class", "recall"]
    else:
        return ""
    rows = [[_e(c)] + [_fmt((r.get("recall") or {}).get(c)) for r in recalls] for c in classes]
    return (f"<h2>Confusion matrix</h2><p>{_e(source)}; rows are true classes, columns predicted.</p>"
            + _img(_heatmap(matrix, classes), "confusion matrix") + "<h3>Recall per class</h3>"
            + _table(header, rows))


def _cleaning(c: dict) -> str:
    text = (f"{_e(c.get('flagged', 0))} weak labels are confidently contradicted by the cross-validation "
            "models that never trained on them (confident learning: another region's probability reaches "
            "0.5 and the mean probability of that region over its own labelled images, and beats the label); "
            f"the {_e(c.get('left_out', 0))} of them outside the fixed validation split were left out of this "
            "version's training. All wait in the review queue's \"doubted\" tab.")
    rows = [[_e(i["image_id"]), _e(i["label"]), _e(i["predicted"]), _fmt(i["probability"]),
             "yes" if i.get("held_out") else ""] for i in (c.get("images") or [])[:50]]
    table = _table(["image", "weak label", "predicted", "probability", "fixed validation"], rows) if rows else ""
    return f"<h2>Doubted weak labels</h2><p>{text}</p>{table}"


def _holdout(h: dict) -> str:
    keys = [("n", "images"), ("top1", "top-1"), ("top2", "top-2"), ("coverage", "coverage"),
            ("accepted_top1", "accepted top-1")]
    return "<h2>Fixed validation split</h2>" + _table([k for _, k in keys], [[_fmt(h.get(k)) for k, _ in keys]])


def _abstention(a: dict) -> str:
    text = (f"An image is reported unsure when the distance of its embedding to the k-th (k = {_e(a.get('k'))}) "
            f"nearest training image exceeds the threshold {_fmt(a.get('threshold'), 4)}, set so that "
            f"{_fmt(a.get('coverage'))} of in-distribution validation images are kept.")
    out = f"<h2>Abstention</h2><p>{text}</p>"
    scores = a.get("val_scores") or []
    if scores:
        fig = Figure(figsize=(6, 3))
        ax = fig.add_subplot()
        ax.hist(scores, bins=min(40, max(5, len(scores) // 5)), color="#789")
        if a.get("threshold") is not None:
            ax.axvline(a["threshold"], color="#b00", label="threshold")
            ax.legend()
        ax.set(xlabel="distance to k-th nearest training embedding", ylabel="validation images")
        fig.tight_layout()
        out += _img(fig, "validation out-of-distribution scores")
    return out


def _training(history: list[dict]) -> str:
    fig = Figure(figsize=(6, 3))
    ax = fig.add_subplot()
    epochs = [h.get("epoch", i) for i, h in enumerate(history)]
    ax.plot(epochs, [h.get("loss") for h in history], label="loss", color="#246")
    ax.set(xlabel="epoch", ylabel="loss")
    ax2 = ax.twinx()
    ax2.plot(epochs, [h.get("train_accuracy") for h in history], label="train accuracy", color="#b60")
    ax2.set(ylabel="train accuracy", ylim=(0, 1.05))
    ax.legend(ax.get_lines() + ax2.get_lines(), ["loss", "train accuracy"], loc="center right")
    fig.tight_layout()
    return "<h2>Training curve</h2>" + _img(fig, "loss and train accuracy per epoch")


def _examples(examples: list[dict]) -> str:
    figs = "".join(f"<figure>{_png_tag(x['png'], x.get('title', ''))}<figcaption>{_e(x.get('title', ''))}"
                   "</figcaption></figure>" for x in examples)
    return f'<h2>Grad-CAM examples</h2><div class="grid">{figs}</div>'


def _config(config: dict) -> str:
    return "<h2>Config</h2>" + _table(["key", "value"], [[_e(k), _e(v)] for k, v in config.items()])


def render_report(meta: dict, examples: list[dict] | None = None) -> str:
    """HTML text."""
    parts = [_header(meta)]
    if meta.get("cv"):
        parts.append(_cv(meta["cv"]))
    parts.append(_confusion(meta))
    if (meta.get("cleaning") or {}).get("enabled"):
        parts.append(_cleaning(meta["cleaning"]))
    if meta.get("holdout"):
        parts.append(_holdout(meta["holdout"]))
    if meta.get("abstention"):
        parts.append(_abstention(meta["abstention"]))
    if meta.get("history"):
        parts.append(_training(meta["history"]))
    if examples:
        parts.append(_examples(examples))
    if meta.get("config"):
        parts.append(_config(meta["config"]))
    title = _e(f"SAM-X sorter {meta.get('version', '')}")
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{title}</title><style>{CSS}</style>'
            "</head><body>\n" + "\n".join(p for p in parts if p) + "\n</body></html>\n")
