"""Job handlers: the code a worker (or the CLI, in-process) runs for each job kind.

Importing this module registers them; the entry points (the CLI, the test suite) do, so the job
machinery never imports the capabilities whose jobs it runs."""
from __future__ import annotations

from dataclasses import replace

from backend.database.schema import JobKind
from backend.jobs.context import JobContext
from backend.jobs.params import IngestParams, IngestResult, IngestSplitResult, PullParams
from backend.jobs.registry import job_kind


@job_kind(JobKind.ingest)
def ingest_job(ctx: JobContext) -> dict:
    from backend.images.ingest import ingest_paths

    p = IngestParams.from_json(ctx.params)
    if p.shard_size is not None and p.parent is None:
        return _split_ingest(ctx, p)
    summary = ingest_paths(
        ctx.db, list(p.paths), report=p.report, voi=p.voi, workers=p.workers,
        progress=lambda done, total, msg: ctx.progress(done, total, msg), job_id=ctx.job_id,
    )
    sorted_ = _sort_new(ctx, summary.by_status["imported"])
    ctx.progress(summary.files, summary.files, "done", force=True)
    return IngestResult(**summary.to_dict(), sorter_predictions=sorted_).to_json()


def _sort_new(ctx: JobContext, imported: int) -> int | None:
    """New radiographs get the active sorter's region at once: how many it sorted (None: no new ones)."""
    if not imported:
        return None
    from backend.sorter.job import predict_missing

    result = predict_missing(ctx)
    return result.predicted if result else None


def _split_ingest(ctx: JobContext, p: IngestParams) -> dict:
    """List the files once and queue one ingest job per ``shard_size`` of them: every worker on
    the queue takes shards, and each shard is an ordinary ingest (one transaction per file,
    duplicates by content hash), so a shard run twice imports nothing twice."""
    from backend.images.ingest import iter_files
    from backend.jobs.shards import spawn_shards

    def shards() -> list[IngestParams]:
        found = [str(f) for f in iter_files(p.paths, exclude=ctx.settings.data_dir)]
        size = p.shard_size or 1
        return [replace(p, paths=tuple(found[i:i + size]), shard_size=None, parent=ctx.job_id)
                for i in range(0, len(found), size)]

    ids = spawn_shards(ctx.db, ctx.job_id, shards)
    files = _files_in(ctx, ids)
    ctx.progress(len(ids), len(ids), f"split {files} files into {len(ids)} shard jobs"
                 + (f" ({ids[0]}-{ids[-1]})" if ids else ""), force=True)
    return IngestSplitResult(files=files, shards=len(ids), shard_size=p.shard_size or 1, shard_jobs=ids).to_json()


def _files_in(ctx: JobContext, ids: list[int]) -> int:
    """The files of the parent's shard jobs (queued by this run or an earlier one)."""
    from sqlalchemy import select

    from backend.database.schema import Job

    with ctx.db.session() as s:
        return sum(len(params.get("paths") or []) for params in s.scalars(select(Job.params).where(Job.id.in_(ids))))


@job_kind(JobKind.pull_dicomweb)
def pull_dicomweb_job(ctx: JobContext) -> dict:
    from backend.pacs.dicomweb import pull

    result = pull(ctx.db, PullParams.from_json(ctx.params), password=ctx.settings.dicomweb_password,
                  progress=lambda done, total, msg: ctx.progress(done, total, msg), job_id=ctx.job_id)
    return replace(result, sorter_predictions=_sort_new(ctx, result.imported)).to_json()


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
