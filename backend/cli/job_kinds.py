"""Job handlers: the code a worker (or the CLI, in-process) runs for each job kind.

Importing this module registers them; the entry points (the CLI, the test suite) do, so the job
machinery never imports the capabilities whose jobs it runs."""
from __future__ import annotations

from dataclasses import replace

from backend.database.schema import JobKind
from backend.jobs.context import JobContext
from backend.jobs.params import IngestParams, IngestResult, PullParams
from backend.jobs.registry import job_kind


@job_kind(JobKind.ingest)
def ingest_job(ctx: JobContext) -> dict:
    from backend.images.ingest import ingest_paths

    p = IngestParams.from_json(ctx.params)
    summary = ingest_paths(
        ctx.db, list(p.paths), report=p.report, voi=p.voi, workers=p.workers,
        progress=lambda done, total, msg: ctx.progress(done, total, msg), job_id=ctx.job_id,
    )
    sorted_ = None
    if summary.by_status["imported"]:  # new radiographs get the active sorter's region at once
        from backend.sorter.job import predict_missing

        sorted_ = predict_missing(ctx)
    ctx.progress(summary.files, summary.files, "done", force=True)
    return IngestResult(**summary.to_dict(), sorter_predictions=sorted_.predicted if sorted_ else None).to_json()


@job_kind(JobKind.pull_dicomweb)
def pull_dicomweb_job(ctx: JobContext) -> dict:
    from backend.pacs.dicomweb import pull

    result = pull(ctx.db, PullParams.from_json(ctx.params), password=ctx.settings.dicomweb_password,
                  progress=lambda done, total, msg: ctx.progress(done, total, msg), job_id=ctx.job_id)
    sorted_ = None
    if result.imported:  # as after an ingest: new radiographs get the active sorter's region at once
        from backend.sorter.job import predict_missing

        sorted_ = predict_missing(ctx)
    return replace(result, sorter_predictions=sorted_.predicted if sorted_ else None).to_json()


@job_kind(JobKind.cluster)
def cluster_job(ctx: JobContext) -> dict:
    from backend.clusters.job import run_cluster_job

    return run_cluster_job(ctx)


@job_kind(JobKind.export)
def export_job(ctx: JobContext) -> dict:
    from backend.datasets.export import run_export_job

    return run_export_job(ctx)


@job_kind(JobKind.import_)
def import_job(ctx: JobContext) -> dict:
    from backend.datasets.importer import run_import_job

    return run_import_job(ctx)


@job_kind(JobKind.train_sorter)
def train_sorter_job(ctx: JobContext) -> dict:
    from backend.sorter.job import run_train_sorter_job

    return run_train_sorter_job(ctx)


@job_kind(JobKind.predict)
def predict_job(ctx: JobContext) -> dict:
    from backend.sorter.job import run_predict_job

    return run_predict_job(ctx)


@job_kind(JobKind.train_detector)
def train_detector_job(ctx: JobContext) -> dict:
    from backend.detector.job import run_train_detector_job

    return run_train_detector_job(ctx)
