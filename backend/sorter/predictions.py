"""What the active sorter says of images, read from its stored predictions."""
from __future__ import annotations

from sqlalchemy import select

from backend.database.schema import Label, SorterPrediction
from backend.sorter.store import active_version


def predicted_regions(s, image_ids) -> dict[int, tuple[str, float]]:
    """image id -> (region, confidence) from the active sorter's stored predictions; images it
    was unsure about, or never saw, are absent."""
    mv = active_version(s)
    ids = [int(i) for i in image_ids]
    if mv is None or not ids:
        return {}
    out = {}
    for start in range(0, len(ids), 2000):
        out.update({i: (name, float(c)) for i, name, c in s.execute(
            select(SorterPrediction.image_id, Label.name, SorterPrediction.confidence)
            .join(Label, Label.id == SorterPrediction.label_id)
            .where(SorterPrediction.model_version_id == mv.id, SorterPrediction.image_id.in_(ids[start:start + 2000])))})
    return out
