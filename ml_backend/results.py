"""Our predictions as Label Studio results: the names must match the labeling config exactly
(config.py), boxes are in percent of the original image with its size, top-left origin."""
from __future__ import annotations

from ml_backend.labeling_config import (ABNORMAL, ABNORMAL_FROM_NAME, IMAGE_TO_NAME, LESION_FROM_NAME, NORMAL,
                                        REGION_FROM_NAME)
from ml_backend.models.boxes import Detections


def prediction_result(det: Detections | None, width: int, height: int, *, p_abnormal: float | None = None,
                      threshold: float = 0.5, region: tuple[str, float] | None = None) -> list[dict]:
    """The ``result`` list of one prediction: fused boxes, normal/abnormal, the body region."""
    out = []
    for i, ((x, y, w, h), s, label) in enumerate(zip(det.boxes.tolist(), det.scores.tolist(), det.labels)
                                                 if det is not None else []):
        out.append({"id": f"samx-{i}", "from_name": LESION_FROM_NAME, "to_name": IMAGE_TO_NAME,
                    "type": "rectanglelabels", "original_width": int(width), "original_height": int(height),
                    "image_rotation": 0, "score": round(float(s), 4),
                    "value": {"x": 100 * x / width, "y": 100 * y / height, "width": 100 * w / width,
                              "height": 100 * h / height, "rotation": 0, "rectanglelabels": [label]}})
    if p_abnormal is not None:
        out.append(_choice(ABNORMAL_FROM_NAME, ABNORMAL if p_abnormal >= threshold else NORMAL, p_abnormal))
    if region is not None:
        out.append(_choice(REGION_FROM_NAME, region[0], region[1]))
    return out


def _choice(from_name: str, choice: str, score: float) -> dict:
    return {"from_name": from_name, "to_name": IMAGE_TO_NAME, "type": "choices", "score": round(float(score), 4),
            "value": {"choices": [choice]}}
