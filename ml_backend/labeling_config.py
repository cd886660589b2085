"""The Label Studio labeling configuration of samx's lesion project, and the names in it.

Label Studio matches predictions and annotations to the config by ``from_name`` / ``to_name``
and by the label strings, exactly: a box whose names differ silently does not show. So the
ML backend and every importer use these constants, never literals.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Iterable, Sequence
from xml.sax.saxutils import quoteattr

PROJECT_TITLE = "samx lesions"

# Tag names: to_name of every control is the image; from_name is the control's name.
IMAGE_TO_NAME = "image"
LESION_FROM_NAME = "lesion"  # <RectangleLabels>: boxes in percent of the image, one label each
REGION_FROM_NAME = "region"  # <Choices>: body region (the vocabulary's active regions)
ABNORMAL_FROM_NAME = "abnormal"  # <Choices>: image-level normal / abnormal
NORMAL, ABNORMAL = "normal", "abnormal"
ABNORMAL_CHOICES = (NORMAL, ABNORMAL)

# Keys of a task's ``data``.
TASK_IMAGE_KEY = "image"  # "/data/local-files/?d=images/<hash[:2]>/<hash>.png" (display rendition)
TASK_IMAGE_ID_KEY = "samx_image_id"  # images.id in samx's database
TASK_REGION_KEY = "region"  # name of the image's current weak region label, or None
#: How a task's image URL names a file below Label Studio's local-files root (what samx serves it).
LOCAL_FILES_URL = "/data/local-files/?d="

DEFAULT_LESION_CLASSES = ("benign", "malignant")
#: The seven lesion types VinDr-SpineXR (Nguyen et al., MICCAI 2021) evaluates detectors on,
#: spelt as in its annotation files ("Spondylolysthesis" included).
VINDR_SPINEXR_LESION_CLASSES = (
    "Osteophytes",
    "Disc space narrowing",
    "Surgical implant",
    "Foraminal stenosis",
    "Spondylolysthesis",
    "Vertebral collapse",
    "Other lesions",
)
LESION_PRESETS = {"bone-tumour": DEFAULT_LESION_CLASSES, "vindr-spinexr": VINDR_SPINEXR_LESION_CLASSES}

_COLOURS = ("#2ca02c", "#d62728", "#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")


def parse_classes(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"benign,malignant"``, a preset name (``vindr-spinexr``, ``bone-tumour``) or a list:
    the lesion classes in order, blanks and repeats dropped. Empty: ()."""
    if value is None:
        return ()
    if isinstance(value, str):
        preset = LESION_PRESETS.get(value.strip().lower())
        items: Iterable[str] = preset if preset else value.split(",")
    else:
        items = value
    out: list[str] = []
    for item in items:
        name = " ".join(str(item).split())
        if name and name not in out:
            out.append(name)
    return tuple(out)


def labeling_config(lesion_classes: Sequence[str], regions: Sequence[str]) -> str:
    """The project's XML: the image, lesion boxes, the body region and normal/abnormal."""
    if not lesion_classes:
        raise ValueError("at least one lesion class is needed")
    for what, names in (("lesion class", lesion_classes), ("region", regions)):
        if len(set(names)) != len(names):
            raise ValueError(f"repeated {what} in {list(names)}")
    lines = [
        "<View>",
        f'  <Image name="{IMAGE_TO_NAME}" value="${TASK_IMAGE_KEY}" zoom="true" zoomControl="true" '
        'brightnessControl="true" contrastControl="true" rotateControl="false"/>',
        f'  <RectangleLabels name="{LESION_FROM_NAME}" toName="{IMAGE_TO_NAME}" strokeWidth="2">',
    ]
    for i, name in enumerate(lesion_classes):
        lines.append(f"    <Label value={quoteattr(name)} background=\"{_COLOURS[i % len(_COLOURS)]}\"/>")
    lines.append("  </RectangleLabels>")
    lines.append('  <Header value="Image"/>')
    lines.append(f'  <Choices name="{ABNORMAL_FROM_NAME}" toName="{IMAGE_TO_NAME}" choice="single" showInline="true">')
    lines += [f"    <Choice value={quoteattr(c)}/>" for c in ABNORMAL_CHOICES]
    lines.append("  </Choices>")
    if regions:
        lines.append('  <Header value="Body region"/>')
        lines.append(f'  <Choices name="{REGION_FROM_NAME}" toName="{IMAGE_TO_NAME}" choice="single" showInline="true">')
        lines += [f"    <Choice value={quoteattr(r)}/>" for r in regions]
        lines.append("  </Choices>")
    lines.append("</View>")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class LabelingConfig:
    """What a labeling config XML declares, for comparisons and checks."""

    lesion_classes: tuple[str, ...]
    regions: tuple[str, ...]
    abnormal_choices: tuple[str, ...]
    image_name: str | None


def parse_labeling_config(xml: str) -> LabelingConfig:
    root = ET.fromstring(xml)

    def values(tag: str, name: str, child: str) -> tuple[str, ...]:
        for el in root.iter(tag):
            if el.get("name") == name and el.get("toName") == IMAGE_TO_NAME:
                return tuple(c.get("value", "") for c in el.iter(child))
        return ()

    image = next((el.get("name") for el in root.iter("Image") if el.get("value") == f"${TASK_IMAGE_KEY}"), None)
    return LabelingConfig(lesion_classes=values("RectangleLabels", LESION_FROM_NAME, "Label"),
                          regions=values("Choices", REGION_FROM_NAME, "Choice"),
                          abnormal_choices=values("Choices", ABNORMAL_FROM_NAME, "Choice"),
                          image_name=image)
