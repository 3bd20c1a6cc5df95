"""Running a grid: skip what is finished, resume what is not, isolate failures, report a summary.

Each run is one MLflow run, found again by its config hash.  `run_one` is self-contained (it takes
plain data and opens its own tracking client), so the same function runs in-process, in joblib's
local process pool, on a Dask cluster through joblib's Dask backend, or as a SLURM array task
through submitit.

A run that reuses another run's generator (`generator: reuse`) depends on it.  `execute` runs the
grid in waves: the runs that depend on nothing first, then the runs whose sources are in the waves
before, and so on; the runs of one wave run in parallel as before.  A dependant starts only once its
source is FINISHED in the store, and loads the generator from the source's logged final model
(`model/model.pt`), so it works wherever the tracking store is reachable.  If the source failed,
the dependant is skipped and says why.

Mid-epoch checkpoints (`Job.checkpoint_minutes`, from `--checkpoint-minutes` or the grid file's
`checkpoint_minutes`) and preemption (`--backend slurm`: `study/requeue.py`) live outside `RunConfig`:
they change when a run is written to disk, never its results, so they are no part of its hash.  A
preempted run checkpoints at the next batch boundary, is marked KILLED with the tag `preempted`, and
its requeued job continues the same MLflow run (found by config hash) from that batch.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import signal
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from study import accounting, checkpoint, env, metadata, mlflow_ui, preempt, schema
from study.config import RunConfig
from study.grid import Grid
from study.methods import get_method
from study.models import get_arch
from study.tracking import Tracker, TrackingUnavailable, git_commit
from study.train import train

log = logging.getLogger(__name__)

DONE, FAILED, KILLED, PENDING, PARTIAL = "FINISHED", "FAILED", "KILLED", "pending", "partial"
INTERRUPTED = "INTERRUPTED"  # stopped by the world (store away past the bound, disk full); resumes
MARKER = "INTERRUPTED"       # in a run's checkpoint folder: why it stopped, until it starts again


@dataclass(frozen=True)
class Job:
    """Everything a worker needs for one run, as plain picklable data."""
    cfg: RunConfig
    resolved_args: dict
    grid: str
    tracking_uri: str
    data_root: str
    checkpoint_dir: str
    threads: int
    retry_failed: bool = False
    git_commit: str = "unknown"  # read once by the launcher: the code it loaded, even if the tree moves on
    tracking_retry_seconds: float | None = None  # None: $STUDY_TRACKING_RETRY_SECONDS or the default
    checkpoint_minutes: float | None = None  # a mid-epoch checkpoint this often (None/0: epoch ends only)


@dataclass(frozen=True)
class Outcome:
    name: str
    status: str           # FINISHED | FAILED | KILLED | INTERRUPTED | skipped
    reason: str = ""
    test_acc: float | None = None
    epochs: int = 0


def source_hash(cfg: RunConfig) -> str | None:
    """The config hash of the run whose generator `cfg` reuses (set by the grid), or None."""
    return cfg.method_args.get("generator_from_hash") if cfg.method == "csg" else None


def run_one(job: Job) -> Outcome:
    """One run, from wherever it stands to FINISHED (or FAILED).  If the tracking store stays away
    longer than the retry bound, the run stops, is marked interrupted in its checkpoint folder
    (`MARKER`; it cannot be marked in the store) and resumes on the next start; the epochs the store
    missed are in its checkpoint and are logged then, once each."""
    torch.set_num_threads(job.threads)
    tracker = Tracker(job.tracking_uri, job.tracking_retry_seconds)
    ckpt_dir = Path(job.checkpoint_dir) / job.cfg.hash()
    (ckpt_dir / MARKER).unlink(missing_ok=True)  # starting again
    try:
        return _run_one(job, tracker)
    except TrackingUnavailable as e:
        log.error("run %s stopped: %s", job.cfg.name, e)
        mark_interrupted(ckpt_dir, f"tracking store unreachable: {e}")
        return Outcome(job.cfg.name, INTERRUPTED, f"{e}; resumes on the next run")
    finally:
        tracker.close()


def mark_interrupted(ckpt_dir: Path, reason: str) -> None:
    try:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        (ckpt_dir / MARKER).write_text(json.dumps({"reason": reason, "time": time.time()}) + "\n")
    except OSError as e:  # e.g. the disk is full too: the run still resumes, only `status` cannot say why
        log.warning("could not mark %s interrupted: %s", ckpt_dir, e)


def interrupted_reason(ckpt_dir: Path) -> str | None:
    try:
        return json.loads((ckpt_dir / MARKER).read_text()).get("reason", "?")
    except (OSError, ValueError, AttributeError):
        return None


def _run_one(job: Job, tracker: Tracker) -> Outcome:
    cfg = job.cfg
    exp = tracker.experiment(job.grid)
    schema.describe_experiment(tracker.client, exp)  # training view, run-table columns
    h = cfg.hash()
    existing = tracker.find(exp, h)
    if existing is not None and existing.info.status == DONE:
        return Outcome(cfg.name, "skipped", "already FINISHED",
                       existing.data.metrics.get(schema.HEADLINE), int(cfg.epochs))
    if existing is not None and existing.info.status == FAILED and not job.retry_failed:
        return Outcome(cfg.name, "skipped", f"FAILED before ({existing.data.tags.get('failure_reason', '?')}); "
                       "use --retry-failed")
    source = None
    if source_hash(cfg):  # generator: reuse; the source must have finished
        source = tracker.find(exp, source_hash(cfg))
        if source is None or source.info.status != DONE:
            return Outcome(cfg.name, "skipped", _not_ready(cfg, source))
    device = env.device()
    if existing is None:
        lineage = {"generator_from": cfg.method_args["generator_from"],
                   "generator_from_run_id": source.info.run_id} if source is not None else {}
        run_id = tracker.create(exp, cfg.name, {
            "config_hash": h, "grid": job.grid, "arch": cfg.arch, "method": cfg.method,
            "git_commit": job.git_commit, "torch_version": torch.__version__, "device": env.device_name(device),
            **lineage})
        method = get_method(cfg.method)
        params = {**cfg.flat_params(), **job.resolved_args, "budget_count": method.count, "knob": method.knob or ""}
        tracker.log(run_id, params=params)
        mlflow_ui.describe_run(tracker.client, run_id, cfg, job.data_root)  # datasets (md5, sizes), colour
        labelled = False
    else:
        run_id = existing.info.run_id
        tracker.set_status(run_id, "RUNNING")
        labelled = not metadata.lacks_metadata(existing.data.metrics, existing.data.tags)  # older code's run?
    logged = tracker.logged_steps(run_id)

    def on_epoch(metrics: dict) -> None:
        if metrics["epoch"] not in logged:
            tracker.log(run_id, {k: v for k, v in metrics.items() if k != "epoch"}, step=metrics["epoch"],
                        wait=False)  # queued: training does not wait for the store
            logged.add(metrics["epoch"])

    ckpt_dir = Path(job.checkpoint_dir) / h
    try:
        if not labelled:  # the labels and the breakdown, before training: an interrupted run has them too
            _log_labels_and_breakdown(tracker, run_id, cfg, job.resolved_args)
        args = job.resolved_args
        if source is not None:
            tracker.log(run_id, tags={"generator_from_run_id": source.info.run_id})  # a retried source: its new id
            args = {**args, "generator_weight": reused_generator(tracker, source)}
        mid_epoch = preempt.MidEpoch(job.checkpoint_minutes)
        try:
            result = train(cfg, job.data_root, ckpt_dir, device=str(device), on_epoch=on_epoch, resolved_args=args,
                           mid_epoch=mid_epoch)
        except preempt.Preempted as stop:
            _note_preempted(tracker, run_id, stop)
            raise
        channels, *size = get_arch(cfg.arch).input_size
        size = size if cfg.image_size is None else (cfg.image_size, cfg.image_size)  # FLOPs as trained
        counts = accounting.account(result.model, (channels, *size))
        final = {**result.summary, **{f"params_{k}" if k in accounting.COUNTS else k: v for k, v in counts.items()},
                 **get_method(cfg.method).final_metrics(result.model, counts["total"])}
        tags = {"precision": result.precision, "trained_on": result.trained_on,
                **({"resumed_from": result.resumed_from} if result.resumed_from else {})}
        tracker.log(run_id, final, step=cfg.epochs, tags=tags, params={"precision_used": result.precision})
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(accounting.compact_state_dict(result.model), Path(tmp) / "model.pt")
            (Path(tmp) / "config.json").write_text(json.dumps(
                {**cfg.to_dict(), "resolved_args": job.resolved_args}, indent=2, default=str))
            tracker.log_artifacts(run_id, Path(tmp), "model")
        mlflow_ui.log_models(job.tracking_uri, run_id, result.model, cfg, step=cfg.epochs)  # mlflow.pytorch
        tracker.set_status(run_id, DONE)
        for old in checkpoint.candidates(ckpt_dir):  # everything now lives in MLflow
            old.unlink(missing_ok=True)
        return Outcome(cfg.name, DONE, "", final.get(schema.HEADLINE), len(result.history))
    except (KeyboardInterrupt, preempt.Preempted):
        raise  # the caller marks every interrupted run KILLED (`mark_killed`); a preempted job requeues
    except TrackingUnavailable:
        raise  # not the run's fault: `run_one` marks it interrupted locally
    except Exception as e:  # isolate: this run fails, the grid goes on
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:480]
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:  # not the run's fault either: resumable
            log.error("run %s stopped: %s", cfg.name, reason)
            tracker.log(run_id, tags={"failure_reason": f"{reason} (resumes once space is free)"})
            tracker.set_status(run_id, KILLED)
            return Outcome(cfg.name, INTERRUPTED, f"{reason}; its last checkpoint is kept and it resumes "
                           "on the next run once space is free")
        log.error("run %s failed: %s\n%s", cfg.name, reason, traceback.format_exc())
        tracker.log(run_id, tags={"failure_reason": reason})
        tracker.set_status(run_id, FAILED)
        return Outcome(cfg.name, FAILED, reason)


def _log_labels_and_breakdown(tracker: Tracker, run_id: str, cfg: RunConfig, resolved_args: dict) -> None:
    """Bookkeeping: never fail a run over it (the report names a run without them); only the store
    going away stops the run, as any other store call does."""
    try:
        tags, breakdown = metadata.labels_and_breakdown(cfg, resolved_args)
        tracker.log(run_id, tags=tags)  # first: a network that cannot be built still gets its labels
        tracker.log(run_id, breakdown(), step=0)
    except TrackingUnavailable:
        raise
    except Exception as e:  # noqa: BLE001
        log.warning("run %s: labels or parameter breakdown not logged: %s", cfg.name, e)


PREEMPT_STORE_SECONDS = 20.0  # of the grace time before the kill, what the store may take


def _note_preempted(tracker: Tracker, run_id: str, stop: preempt.Preempted) -> None:
    """Best effort, bounded (the kill follows the signal within a grace time): the queued epoch metrics
    land, the run is marked KILLED with the tag `preempted` (where it stopped), and the requeued job sets
    it RUNNING again.  If the store is slow, nothing is lost: the finished epochs are in the checkpoint's
    history and the requeued job logs the ones the store lacks."""
    deadline = time.monotonic() + PREEMPT_STORE_SECONDS
    while tracker.pending() and time.monotonic() < deadline:
        time.sleep(0.05)
    if tracker.pending():
        log.warning("run %s preempted at %s; its last epoch metrics are logged when it is requeued", run_id, stop.where)
        return
    tracker.retry_seconds = min(tracker.retry_seconds, max(0.0, deadline - time.monotonic()))
    try:
        sig = f" ({signal.Signals(stop.signum).name})" if stop.signum else ""
        tracker.log(run_id, tags={"preempted": f"{stop.where}{sig}; requeued"})
        tracker.set_status(run_id, KILLED)
    except Exception as e:  # noqa: BLE001  (the store is away: the requeued job sets the status anyway)
        log.warning("run %s preempted at %s; could not mark it in the store: %s", run_id, stop.where, e)


def _not_ready(cfg: RunConfig, source) -> str:
    name = cfg.method_args.get("generator_from", "?")
    if source is None:
        return f"waits for {name} (its generator source), which has not run"
    why = source.data.tags.get("failure_reason")
    return f"source {name} is {source.info.status}{f' ({why})' if why else ''}; not started"


def reused_generator(tracker: Tracker, source) -> torch.Tensor:
    """The generator weight of a FINISHED source run, from the final model it logged."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = tracker.client.download_artifacts(source.info.run_id, "model/model.pt", tmp)
        except TrackingUnavailable:
            raise  # the store is away: the run is interrupted, not failed
        except Exception as e:  # noqa: BLE001  (MLflow raises several kinds)
            raise RuntimeError(f"source run {source.info.run_name} ({source.info.run_id}) has no logged model "
                               f"to take the generator from: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        state = torch.load(local, map_location="cpu", weights_only=True)
    csg = get_method("csg")
    weight = csg.generator_in(state)
    if weight is None:
        raise RuntimeError(f"source run {source.info.run_name} logged a model without a generator ({csg.GENERATOR_KEY})")
    return weight


# -- the grid -----------------------------------------------------------------------------------
def jobs_for(grid: Grid, tracking_uri: str, data_root: str, output_root: Path, n_jobs: int,
             retry_failed: bool = False, threads: int | None = None,
             checkpoint_minutes: float | None = None) -> list[Job]:
    """`checkpoint_minutes` (None: the grid file's `checkpoint_minutes`, if any) sets mid-epoch checkpoints."""
    threads = threads or max(1, (os.cpu_count() or 1) // max(1, n_jobs))
    ckpt = str(grid.checkpoint_root(output_root))
    commit = git_commit()
    minutes = checkpoint_minutes if checkpoint_minutes is not None else grid.checkpoint_minutes
    return [Job(c, grid.resolved_args[c.hash()], grid.name, tracking_uri, data_root, ckpt, threads, retry_failed,
                git_commit=commit, checkpoint_minutes=minutes or None)
            for c in grid.runs]


def waves(jobs: list[Job]) -> list[list[int]]:
    """Indices of `jobs` by dependency level: wave 0 depends on nothing, wave k+1 on waves <= k only.
    A source outside `jobs` (not in the grid) is left to `run_one`, which checks the store."""
    index = {j.cfg.hash(): i for i, j in enumerate(jobs)}
    level: dict[int, int] = {}

    def depth(i: int, seen: frozenset = frozenset()) -> int:
        if i not in level:
            src = index.get(source_hash(jobs[i].cfg))
            if src in seen | {i}:
                raise ValueError(f"{jobs[i].cfg.name}: generator sources form a cycle")
            level[i] = 0 if src is None else depth(src, seen | {i}) + 1
        return level[i]

    out: list[list[int]] = [[] for _ in range(max((depth(i) for i in range(len(jobs))), default=-1) + 1)]
    for i in range(len(jobs)):
        out[level[i]].append(i)
    return out


def _blocked(job: Job, done: dict[str, Outcome]) -> Outcome | None:
    """A dependant whose source did not finish in this invocation (nor before) is not started."""
    src = done.get(source_hash(job.cfg) or "")
    if src is None or src.status == DONE or (src.status == "skipped" and src.reason == "already FINISHED"):
        return None
    return Outcome(job.cfg.name, "skipped", f"source {src.name} {src.status}"
                   f"{f' ({src.reason})' if src.reason else ''}; not started")


def execute(jobs: list[Job], n_jobs: int = 1, backend: str = "local", scheduler: str | None = None,
            slurm: dict | None = None) -> list[Outcome]:
    """Every job's outcome, in the order of `jobs`; dependants run in a later wave than their sources."""
    slurm = dict(slurm or {})
    outcomes: dict[int, Outcome] = {}
    by_hash: dict[str, Outcome] = {}
    client = None
    try:
        for wave in waves(jobs):
            todo = []
            for i in wave:
                blocked = _blocked(jobs[i], by_hash)
                if blocked is not None:
                    outcomes[i] = blocked
                else:
                    todo.append(i)
            if backend == "dask" and client is None and todo:
                from dask.distributed import Client

                client = Client(scheduler)
            for i, outcome in zip(todo, _execute_wave([jobs[i] for i in todo], n_jobs, backend, client, slurm)):
                outcomes[i] = outcome
            for i in wave:
                by_hash[jobs[i].cfg.hash()] = outcomes[i]
    finally:
        if client is not None:
            client.close()
    return [outcomes[i] for i in range(len(jobs))]


def _execute_wave(jobs: list[Job], n_jobs: int, backend: str, client, slurm: dict) -> list[Outcome]:
    if not jobs:
        return []
    if backend == "slurm":
        return _execute_slurm(jobs, dict(slurm))
    if n_jobs == 1 and backend == "local":
        return [run_one(j) for j in jobs]  # in-process: Ctrl-C reaches the run directly
    import joblib

    if backend == "dask":
        with joblib.parallel_config(backend="dask"):  # `execute`'s client is the default one
            n = n_jobs if n_jobs > 0 else sum(client.nthreads().values())
            return joblib.Parallel(n_jobs=n)(joblib.delayed(run_one)(j) for j in jobs)
    return joblib.Parallel(n_jobs=n_jobs, backend="loky")(joblib.delayed(run_one)(j) for j in jobs)


def _execute_slurm(jobs: list[Job], slurm: dict) -> list[Outcome]:
    """One job array per wave (a wave's runs are independent of each other).  Each task is a
    `requeue.RequeueableRun`: on SLURM's signal before the time limit or at preemption it checkpoints
    at the next batch boundary and requeues itself; the future's result is the run's final outcome."""
    import submitit
    from submitit.core.utils import UncompletedJobError

    from study.requeue import RequeueableRun

    folder = slurm.pop("folder", "slurm_logs")
    timeouts = slurm.pop("max_num_timeout", None)  # requeues after a time limit (not preemptions); submitit: 3
    executor = submitit.AutoExecutor(folder=folder, cluster=slurm.pop("cluster", None),
                                     **({"slurm_max_num_timeout": int(timeouts)} if timeouts is not None else {}))
    executor.update_parameters(**slurm)
    futures = executor.map_array(RequeueableRun(run_one), jobs)
    outcomes = []
    for job, future in zip(jobs, futures):
        try:
            outcomes.append(future.result())
        except UncompletedJobError as e:  # e.g. requeued too often, or killed outright
            why = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)[:300]
            outcomes.append(Outcome(job.cfg.name, INTERRUPTED, f"job ended before the run did ({why}); its "
                                    "checkpoint is kept and it resumes on the next run"))
    return outcomes


def mark_killed(grid: Grid, tracking_uri: str) -> None:
    """After Ctrl-C: every run of the grid still RUNNING becomes KILLED (and stays resumable)."""
    tracker = Tracker(tracking_uri)
    exp = tracker.existing_experiment(grid.name)
    hashes = {c.hash() for c in grid.runs}
    for run in tracker.runs(exp) if exp else []:
        if run.info.status == "RUNNING" and run.data.tags.get("config_hash") in hashes:
            tracker.log(run.info.run_id, tags={"failure_reason": "interrupted; resumable"})
            tracker.set_status(run.info.run_id, KILLED)


def _last_logged(at: float | None) -> str:
    """How long ago the run's newest epoch reached the store, as a reader judges a heartbeat by."""
    if at is None:
        return "no epoch logged yet"
    age = max(0, int(time.time() - at))
    ago = f"{age} s" if age < 120 else f"{age // 60} min" if age < 7200 else f"{age / 3600:.1f} h"
    return f"last epoch logged {ago} ago"


def status(grid: Grid, tracking_uri: str, output_root: Path) -> list[dict]:
    """done / partial (epoch k of n) / failed (reason) / pending, for each run of the grid.  A run the store
    holds as RUNNING also says when its last epoch was logged: a worker that was killed outright (a session's
    end, SIGKILL) leaves its run RUNNING, and only the age of that epoch tells it from one still training."""
    tracker = Tracker(tracking_uri)
    by_hash = tracker.current_runs(tracker.existing_experiment(grid.name))
    rows = []
    ckpt_root = grid.checkpoint_root(output_root)
    for cfg in grid.runs:
        h, run = cfg.hash(), by_hash.get(cfg.hash())
        latest = checkpoint.candidates(ckpt_root / h)
        epoch = checkpoint.position(latest[0])[0] if latest else 0
        if run is None:
            state = PENDING if not epoch else f"{PARTIAL} (epoch {epoch} of {cfg.epochs})"
            if state == PENDING and source_hash(cfg):  # a reuse run: say what it waits for
                src = by_hash.get(source_hash(cfg))
                name = cfg.method_args.get("generator_from", "?")
                state += (f" (after {name})" if src is None or src.info.status in (DONE, "RUNNING", KILLED)
                          else f" (blocked: source {name} {src.info.status})")
        elif run.info.status == DONE:
            state = "done"
        elif run.info.status == FAILED:
            state = f"failed ({run.data.tags.get('failure_reason', 'no reason recorded')})"
        else:
            logged = tracker.logged_at(run.info.run_id)  # one read gives the epochs and their times
            steps = max(epoch, len(logged))
            state = f"{PARTIAL} (epoch {steps} of {cfg.epochs})" if steps else PENDING
            if run.info.status == "RUNNING":  # training somewhere, or stopped without a word: the age tells
                state += f"; RUNNING in the store, {_last_logged(max(logged.values(), default=None))}"
        why = interrupted_reason(ckpt_root / h) if state != "done" else None
        if why:
            state = f"interrupted at epoch {epoch} of {cfg.epochs} ({why}); resumes on the next run"
        rows.append({"name": cfg.name, "hash": h, "state": state, **grid.counts[h]})
    return rows


def summary_table(outcomes: list[Outcome]) -> str:
    width = max([len(o.name) for o in outcomes] + [4])
    lines = [f"{'run':<{width}}  {'status':<9}  {'test@bestval':>12}  note"]
    for o in outcomes:
        acc = f"{o.test_acc:.2f}" if o.test_acc is not None else "-"
        lines.append(f"{o.name:<{width}}  {o.status:<9}  {acc:>12}  {o.reason}")
    return "\n".join(lines)

