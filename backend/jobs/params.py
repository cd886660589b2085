"""What each job kind takes and gives back: a frozen dataclass for its parameters and one for its
result, so the keys are written in one place instead of one module writing a dict and another
reading it.

The JSON they store (``Job.params``, ``Job.result``) has the shape it always had: flat keys with
the same names, so older rows, ``samx jobs show`` and the web pages read as before.

- Parameters: a field left ``None`` is not given, and the job works its default out itself (from
  the settings, the active model version, the data), as it did from the missing key; ``to_json``
  leaves such fields out. ``from_json`` refuses keys the kind does not know (JobFailed naming
  them). The cluster and sorter jobs also take their network's config fields (DeepClusterConfig,
  SorterConfig) flat beside their own: ``config`` holds those overrides.
- Results: ``from_json`` ignores keys it does not know, so rows written by another version still
  read; a field marked ``OMIT_NONE`` is left out of the JSON while None (a key the job only ever
  wrote when it had a value).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from functools import cache
from types import UnionType
from typing import Any, ClassVar, Self, Union, get_args, get_origin, get_type_hints

from backend.database.schema import JobKind
from backend.jobs.context import JobFailed
from clustering.deepcluster import DeepClusterConfig
from clustering.sorter.model import SorterConfig

#: Field metadata: a result field left out of the JSON while it is None.
OMIT_NONE = {"omit_none": True}


@cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _kinds(hint: Any) -> tuple[Any, ...]:
    """A hint and, for ``X | None``, its members."""
    return get_args(hint) if get_origin(hint) in (Union, UnionType) else (hint,)


def _read(hint: Any, value: Any) -> Any:
    """A JSON value as the field's type: lists to tuples, dicts to nested records."""
    if value is None:
        return None
    for kind in _kinds(hint):
        if (kind is tuple or get_origin(kind) is tuple) and isinstance(value, list):
            return tuple(value)
        if get_origin(kind) is None and isinstance(kind, type) and issubclass(kind, JobData) \
                and isinstance(value, Mapping):
            return kind.from_json(value)
    return value


def _write(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, JobData):
        return value.to_json()
    return value


class JobData:
    """``to_json`` (what the Job row stores) and ``from_json`` (read it back), for frozen dataclasses."""

    #: A dict field whose keys stand flat beside the other fields in the JSON.
    _flat: ClassVar[str | None] = None
    #: Leave every None out of the JSON (else only the fields marked OMIT_NONE).
    _omit_none: ClassVar[bool] = False

    def to_json(self) -> dict[str, Any]:
        own, flat = {}, {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == self._flat:
                flat = {k: v for k, v in value.items() if not (v is None and self._omit_none)}
            elif not (value is None and (self._omit_none or f.metadata.get("omit_none"))):
                own[f.name] = _write(value)
        return {**flat, **own}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Self:
        data = dict(data or {})
        hints = _hints(cls)
        names = {f.name for f in fields(cls) if f.name != cls._flat}
        given = {k: _read(hints[k], v) for k, v in data.items() if k in names}
        rest = {k: v for k, v in data.items() if k not in names}
        if cls._flat is not None:  # its own checks refuse what it may not name (JobParams.__post_init__)
            given[cls._flat], rest = rest, {}
        cls._check(set(rest), {f.name for f in fields(cls) if _required(f)} - set(given))
        return cls(**given)

    @classmethod
    def _check(cls, unknown: set[str], missing: set[str]) -> None:
        if missing:
            raise ValueError(f"{cls.__name__} lacks {', '.join(sorted(missing))}")


def _required(f: Field) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


class JobParams(JobData):
    """A job's parameters: None fields are not given (left out of the JSON); unknown keys refused."""

    _omit_none = True
    kind: ClassVar[JobKind]
    #: How the job's messages name its parameters ("unknown clustering parameter(s): ...").
    _what: ClassVar[str]
    #: The dataclass whose fields the flat ``config`` overrides may name.
    _config_type: ClassVar[type | None] = None

    def __post_init__(self) -> None:
        if self._flat is not None and self._config_type is not None:
            allowed = {f.name for f in fields(self._config_type)}
            self._refuse(set(getattr(self, self._flat)) - allowed)

    def over(self, defaults: Self) -> Self:
        """These parameters where they are given, ``defaults`` where they are None."""
        return replace(defaults, **{f.name: getattr(self, f.name) for f in fields(self)
                                    if getattr(self, f.name) is not None})

    @classmethod
    def _refuse(cls, unknown: set[str]) -> None:
        if unknown:
            raise JobFailed(f"unknown {cls._what} parameter(s): {', '.join(sorted(unknown))}")

    @classmethod
    def _check(cls, unknown: set[str], missing: set[str]) -> None:
        cls._refuse(unknown)
        if missing:
            raise JobFailed(f"missing {cls._what} parameter(s): {', '.join(sorted(missing))}")


class JobResult(JobData):
    """A job's result: keys this version does not know are ignored, so other versions' rows read."""


# ---------------------------------------------------------------- ingest


@dataclass(frozen=True, kw_only=True)
class IngestParams(JobParams):
    kind = JobKind.ingest
    _what = "ingest"

    paths: tuple[str, ...]
    report: str | None = None  # one JSON record per file written here
    voi: str = "auto"  # DICOM intensity transform: auto, lut, window, none
    workers: int | None = None  # decoding processes (None: all cores)
    #: Split the files into shard jobs of this many, which any `samx worker` takes up (None: one job).
    shard_size: int | None = None
    parent: int | None = None  # a shard: the ingest job that split the files (its paths are the shard's files)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.shard_size is not None and self.shard_size < 1:
            raise JobFailed(f"shard_size must be at least 1, not {self.shard_size}")
        if self.shard_size is not None and self.report is not None:
            raise JobFailed("a sharded ingest writes no --report (each shard job has its own result)")


@dataclass(frozen=True, kw_only=True)
class IngestSplitResult(JobResult):
    """An ingest split into shards: the files it found and the shard jobs that ingest them
    (``samx jobs show`` adds up their results)."""

    files: int
    shards: int
    shard_size: int
    shard_jobs: list[int]


@dataclass(frozen=True, kw_only=True)
class IngestResult(JobResult):
    files: int
    imported: int
    duplicate: int
    rejected: int
    rejected_by_reason: dict[str, int]
    seconds: float
    files_per_second: float
    sorter_predictions: int | None = field(default=None, metadata=OMIT_NONE)  # new images the active sorter sorted


# ---------------------------------------------------------------- pull_dicomweb


@dataclass(frozen=True, kw_only=True)
class PullParams(JobParams):
    """`samx ingest dicomweb://...`: the password is not a parameter (it would be stored in the
    job row); the job reads it from the settings (SAMX_DICOMWEB_PASSWORD)."""

    kind = JobKind.pull_dicomweb
    _what = "DICOMweb pull"

    url: str  # http(s)://host:port/prefix of the DICOMweb service
    since: str | None = None  # YYYYMMDD: studies on or after this date
    modalities: tuple[str, ...] = ()  # only series of these modalities (empty: all)
    body_parts: tuple[str, ...] = ()  # only series with these BodyPartExamined values (empty: all)
    user: str | None = None  # basic auth (None: the settings' SAMX_DICOMWEB_USER)
    voi: str = "auto"  # DICOM intensity transform: auto, lut, window, none
    workers: int | None = None  # decoding processes (None: all cores)


@dataclass(frozen=True, kw_only=True)
class PullResult(JobResult):
    url: str
    studies: int  # matching the query
    series: int  # matching the modality and body-part filters
    instances: int  # in those series
    already_had: int  # in the ledger from an earlier pull or push: not retrieved
    retrieved: int
    failed: int  # the server could not deliver them; a later pull tries again
    failed_studies: int  # the server could not list their series or instances; a later pull tries again
    imported: int
    duplicate: int
    rejected: int
    rejected_by_reason: dict[str, int]
    seconds: float
    studies_per_second: float
    sorter_predictions: int | None = field(default=None, metadata=OMIT_NONE)


# ---------------------------------------------------------------- cluster


@dataclass(frozen=True, kw_only=True)
class ClusterParams(JobParams):
    """DeepCluster over every imported radiograph; ``config`` overrides DeepClusterConfig's fields."""

    kind = JobKind.cluster
    _what = "clustering"
    _flat = "config"
    _config_type = DeepClusterConfig

    size: int | None = None  # input resolution (None: 64)
    method: str | None = None  # enhancement (None: fhe)
    workers: int | None = None  # processes preparing the images
    config: dict[str, Any] = field(default_factory=dict)  # DeepClusterConfig fields (k: about 40 images a cluster)


@dataclass(frozen=True, kw_only=True)
class ClusterResult(JobResult):
    run_id: int
    images: int
    k: int
    processes: int  # > 1: trained under torchrun
    nmi_consecutive: float | None  # NMI between the last two epochs' assignments
    final_loss: float | None
    labelled_images: int | None = field(default=None, metadata=OMIT_NONE)  # with a current weak label
    purity_vs_labels: float | None = field(default=None, metadata=OMIT_NONE)
    nmi_vs_labels: float | None = field(default=None, metadata=OMIT_NONE)
    seconds: float


# ---------------------------------------------------------------- export


@dataclass(frozen=True, kw_only=True)
class ExportParams(JobParams):
    kind = JobKind.export
    _what = "export"

    format: str | None = None  # coco, voc or yolo
    out: str
    sources: tuple[str, ...] = ()  # label sources (empty: weak, corrected, imported)
    min_score: float = 0.5  # threshold for predicted labels and boxes
    regions: tuple[str, ...] = ()  # only these body regions (empty: all)
    run_id: int | None = None  # only the images of this clustering run
    model_version: str | int | None = None  # predictions only from this version (version, kind:version or id)
    split: str = "0.8,0.1,0.1"  # train,val,test fractions
    seed: int = 0  # of the split assignment
    images: str = "copy"  # copy, link or none
    image_format: str | None = None  # png16, png8 or jpg (None: the format's own)
    force: bool = False  # replace a non-empty OUT


@dataclass(frozen=True, kw_only=True)
class ExportResult(JobResult):
    out: str
    format: str
    checksum: str
    images: int
    boxes: int
    clipped_boxes: int
    dropped_boxes: int
    images_without_boxes: int
    discarded_images_left_out: int
    splits: dict[str, dict[str, int]]  # split -> {"images", "boxes", "groups"}


# ---------------------------------------------------------------- import


@dataclass(frozen=True, kw_only=True)
class ImportParams(JobParams):
    kind = JobKind.import_
    _what = "import"

    format: str | None = None  # coco or voc
    path: str
    image_dir: str | None = None  # COCO: the folder file_name is relative to
    workers: int | None = None  # ingest processes


@dataclass(frozen=True, kw_only=True)
class ImportResult(JobResult):
    images: int
    matched: int  # already in samx
    ingested: int
    failed: int
    boxes_added: int
    boxes_present: int
    labels_added: int
    labels_present: int
    problems: list[str]
    job_id: int


# ---------------------------------------------------------------- train_sorter, predict


@dataclass(frozen=True, kw_only=True)
class TrainSorterParams(JobParams):
    """The sorter on the current region weak labels; ``config`` overrides SorterConfig's fields.
    None: the job's default (backend.sorter.job.DEFAULTS)."""

    kind = JobKind.train_sorter
    _what = "sorter"
    _flat = "config"
    _config_type = SorterConfig

    folds: int | None = None  # cross-validation folds (None: 5; 0: none)
    min_per_class: int | None = None  # regions with fewer labelled images are left out (None: 5)
    size: int | None = None  # input resolution without a DeepCluster start (None: 64)
    method: str | None = None  # enhancement without a DeepCluster start (None: fhe)
    init: str | None = None  # deepcluster, none, imagenet or a weights file (None: deepcluster)
    force: bool | None = None  # activate even when worse than the active version
    reason: str | None = None  # why it was trained (None: "trained by hand")
    clean: bool | None = None  # leave out the labels cross-validation contradicts (None: yes)
    config: dict[str, Any] = field(default_factory=dict)  # SorterConfig fields


@dataclass(frozen=True, kw_only=True)
class AcrossFolds(JobResult):
    """A metric over the cross-validation folds."""

    mean: float
    sd: float  # sample sd (0 with one fold)
    values: list[float]


@dataclass(frozen=True, kw_only=True)
class TrainSorterResult(JobResult):
    model_version_id: int
    version: str
    promoted: bool
    reason: str  # why it was or was not made active
    images: int
    classes: list[str]
    holdout_top1: float
    holdout_top2: float
    cv_top1: AcrossFolds | None  # None without cross-validation
    cv_top2: AcrossFolds | None
    left_out: int  # weak labels cross-validation contradicted, left out of training
    predicted: int  # images sorted by the new version (0 unless promoted)


@dataclass(frozen=True, kw_only=True)
class PredictParams(JobParams):
    kind = JobKind.predict
    _what = "predict"


@dataclass(frozen=True, kw_only=True)
class PredictResult(JobResult):
    model_version_id: int
    predicted: int


# ---------------------------------------------------------------- train_detector


@dataclass(frozen=True, kw_only=True)
class TrainDetectorParams(JobParams):
    """None: the job's default (backend.detector.job.DEFAULTS, the settings' epochs and size, or
    with ``follow_active`` the active version's architecture, tile, size and batch)."""

    kind = JobKind.train_detector
    _what = "detector"

    arch: str | None = None  # Faster R-CNN backbone (mobilenet_v3, resnet18_fpn, ...)
    tile: int | None = None  # train on lesion-centred tiles of this many input pixels (None: whole images)
    size: int | None = None  # long side the network sees
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None  # peak learning rate
    seed: int | None = None
    classifier_epochs: int | None = None  # of the image-level normal/abnormal classifier
    min_images: int | None = None  # fewer annotated images: the job fails
    reason: str | None = None  # why it was trained (the version's trigger)
    rank_batch: int | None = None  # the active-learning batch the ranking spreads over
    warm_start: bool | None = None  # fine-tune the active version
    follow_active: bool | None = None  # the labeling loop's training: continue the active version
    #: The normal/abnormal classifier's start: deepcluster (the latest DeepCluster network, random
    #: weights while there is none), none (random weights), imagenet, or a weights file (None: deepcluster).
    classifier_weights: str | None = None
    #: The detector's backbone, with the same choices (deepcluster only for resnet18_fpn, whose body is
    #: the DeepCluster network; the others start from random weights then). Not with a warm start.
    backbone_weights: str | None = None


@dataclass(frozen=True, kw_only=True)
class TrainDetectorResult(JobResult):
    model_version_id: int
    version: str
    images: int
    validation_images: int
    map50: float | None  # None without validation images
    fusion_threshold: float
    ranked: int  # unlabelled images ranked for labeling
    warm_start: str | None  # the version it was fine-tuned from

