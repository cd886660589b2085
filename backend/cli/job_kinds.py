"""Job handlers: the code a worker (or the CLI, in-process) runs for each job kind.

Importing this module registers them; the entry points (the CLI, the test suite) do, so the job
machinery never imports the capabilities whose jobs it runs."""
from __future__ import annotations

from backend.jobs.context import JobContext
from backend.jobs.registry import job_kind


@job_kind("ingest")
def ingest_job(ctx: JobContext) -> dict:
    from backend.images.ingest import ingest_paths

    p = ctx.params
    summary = ingest_paths(
        ctx.db, p["paths"], report=p.get("report"), voi=p.get("voi", "auto"), workers=p.get("workers"),
        progress=lambda done, total, msg: ctx.progress(done, total, msg), job_id=ctx.job_id,
    )
    result = summary.to_dict()
    if summary.by_status["imported"]:  # new radiographs get the active sorter's region at once
        from backend.sorter.job import predict_missing

        sorted_ = predict_missing(ctx)
        if sorted_ is not None:
            result["sorter_predictions"] = sorted_["predicted"]
    ctx.progress(summary.files, summary.files, "done", force=True)
    return result


@job_kind("cluster")
def cluster_job(ctx: JobContext) -> dict:
    from backend.clusters.job import run_cluster_job

    return run_cluster_job(ctx)


@job_kind("export")
def export_job(ctx: JobContext) -> dict:
    from backend.datasets.export import run_export_job

    return run_export_job(ctx)


@job_kind("import")
def import_job(ctx: JobContext) -> dict:
    from backend.datasets.importer import run_import_job

    return run_import_job(ctx)


@job_kind("train_sorter")
def train_sorter_job(ctx: JobContext) -> dict:
    from backend.sorter.job import run_train_sorter_job

    return run_train_sorter_job(ctx)


@job_kind("predict")
def predict_job(ctx: JobContext) -> dict:
    from backend.sorter.job import run_predict_job

    return run_predict_job(ctx)


@job_kind("train_detector")
def train_detector_job(ctx: JobContext) -> dict:
    from backend.detector.job import run_train_detector_job

    return run_train_detector_job(ctx)
