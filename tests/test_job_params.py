"""backend.jobs.params: each job kind's parameters and result as dataclasses, stored as the flat
JSON the Job rows always held."""
from __future__ import annotations

import pytest

from backend.database.schema import JobKind, JobStatus
from backend.jobs import JobFailed, enqueue
from backend.jobs.params import (AcrossFolds, ClusterParams, ExportParams, IngestParams, IngestResult, JobParams,
                                 PredictParams, TrainDetectorParams, TrainSorterParams, TrainSorterResult)
from tests.factories import run_job


def test_every_job_kind_has_its_parameters():
    assert {cls.kind for cls in JobParams.__subclasses__()} == set(JobKind)


def test_parameters_store_flat_json_without_the_ones_not_given():
    cluster = ClusterParams(size=64, config={"k": None, "epochs": 30})
    assert cluster.to_json() == {"epochs": 30, "size": 64}
    assert ClusterParams.from_json(cluster.to_json()) == ClusterParams(size=64, config={"epochs": 30})
    sorter = TrainSorterParams(folds=0, config={"epochs": 2, "coverage": 0.9})
    assert sorter.to_json() == {"epochs": 2, "coverage": 0.9, "folds": 0}
    assert TrainSorterParams.from_json(sorter.to_json()) == sorter
    assert TrainDetectorParams(reason="r", follow_active=True).to_json() == {"reason": "r", "follow_active": True}
    assert PredictParams.from_json({}).to_json() == {}
    ingest = IngestParams.from_json({"paths": ["/a", "/b"], "workers": 1})
    assert ingest.paths == ("/a", "/b") and ingest.to_json() == {"paths": ["/a", "/b"], "voi": "auto", "workers": 1}
    export = ExportParams.from_json({"format": "coco", "out": "/x", "sources": ["weak"], "images": None})
    assert export.sources == ("weak",) and export.images is None and export.min_score == 0.5


@pytest.mark.parametrize("cls, raw, words", [
    (ClusterParams, {"k": 3, "colour": 1}, "unknown clustering parameter(s): colour"),
    (TrainSorterParams, {"bogus": 1, "epochs": 2}, "unknown sorter parameter(s): bogus"),
    (TrainDetectorParams, {"epoch": 2}, "unknown detector parameter(s): epoch"),
    (ExportParams, {"format": "coco"}, "missing export parameter(s): out"),
    (PredictParams, {"k": 1}, "unknown predict parameter(s): k"),
])
def test_unknown_or_missing_parameters_are_named(cls, raw, words):
    with pytest.raises(JobFailed, match=words.replace("(", r"\(").replace(")", r"\)")):
        cls.from_json(raw)


def test_results_keep_their_shape_and_read_rows_with_more_keys():
    row = {"model_version_id": 1, "version": "v", "promoted": True, "reason": "first", "images": 9,
           "classes": ["hand", "knee"], "holdout_top1": 0.5, "holdout_top2": 1.0,
           "cv_top1": {"mean": 0.5, "sd": 0.1, "values": [0.4, 0.6]}, "cv_top2": None, "left_out": 0,
           "predicted": 9}
    result = TrainSorterResult.from_json({**row, "from_a_later_version": 1})
    assert result.cv_top1 == AcrossFolds(mean=0.5, sd=0.1, values=[0.4, 0.6]) and result.cv_top2 is None
    assert result.to_json() == row
    ingest = dict(files=1, imported=1, duplicate=0, rejected=0, rejected_by_reason={}, seconds=0.1,
                  files_per_second=10.0)
    assert "sorter_predictions" not in IngestResult(**ingest).to_json()
    assert IngestResult(**ingest, sorter_predictions=1).to_json()["sorter_predictions"] == 1


def test_enqueue_takes_parameters_or_their_json(sqlite_db):
    job = enqueue(sqlite_db, JobKind.train_detector, TrainDetectorParams(reason="r", follow_active=True), send=False)
    assert job.params == {"reason": "r", "follow_active": True}
    with pytest.raises(TypeError):
        enqueue(sqlite_db, JobKind.cluster, TrainSorterParams(), send=False)
    failed = run_job(sqlite_db, "train_detector", epoch=2)
    assert failed.status == JobStatus.failed and failed.error == "unknown detector parameter(s): epoch"
