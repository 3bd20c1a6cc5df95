"""MLflow bookkeeping for runs: one MLflow run per config hash, resumed in place, logged exactly once.

The default store is embedded: a SQLite file in the project (`mlflow.db`) with artifacts beside it
(`mlartifacts/`), created on first use, no server to start.  Several worker processes may write to
it at once; SQLite then answers "database is locked" now and then, so every write goes through
`_retry`, which backs off and tries again instead of losing the write (`tests/test_scaleout.py`).
Ctrl-C is held back for the length of each store call: a KeyboardInterrupt raised inside SQLAlchemy
skips its rollback (it catches only `Exception`) and leaves a write lock that no later client could
take, so the interrupt is delivered just after the call instead.
"""
from __future__ import annotations

import functools
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

PROJECT = Path(__file__).resolve().parent.parent
BATCH = 900  # MLflow accepts at most 1000 entries per log_batch


def default_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT / 'mlflow.db'}"


def _transient(e: Exception) -> bool:
    text = str(e).lower()
    return any(s in text for s in ("database is locked", "locked", "busy", "connection", "timed out", "503"))


def _without_interrupt(fn, *a, **kw):
    if threading.current_thread() is not threading.main_thread():
        return fn(*a, **kw)  # Python runs signal handlers on the main thread only
    held = []
    previous = signal.signal(signal.SIGINT, lambda *sig: held.append(sig))
    try:
        return fn(*a, **kw)
    finally:
        signal.signal(signal.SIGINT, previous)
        if held and callable(previous):
            previous(*held[0])  # the default handler raises KeyboardInterrupt here, after the call
        elif held and previous == signal.SIG_DFL:
            os.kill(os.getpid(), signal.SIGINT)


def _retry(fn, attempts: int = 30):
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        for i in range(attempts):
            try:
                return _without_interrupt(fn, *a, **kw)
            except Exception as e:  # sqlalchemy's OperationalError arrives wrapped or bare
                if i == attempts - 1 or not _transient(e):
                    raise
                time.sleep(min(5.0, 0.05 * 2 ** i) * (0.5 + random.random()))
    return wrapper


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Tracker:
    def __init__(self, uri: str | None = None):
        self.uri = uri or default_uri()
        self.client = MlflowClient(tracking_uri=self.uri)

    @_retry
    def existing_experiment(self, name: str) -> str | None:
        exp = self.client.get_experiment_by_name(name)
        return exp.experiment_id if exp is not None else None

    @_retry
    def experiment(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = None
        if self.uri.startswith("sqlite:///"):  # keep artifacts beside the embedded store, not in cwd
            location = (Path(self.uri.removeprefix("sqlite:///")).parent / "mlartifacts" / name).as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException:  # another worker created it first
            return self.client.get_experiment_by_name(name).experiment_id

    @_retry
    def find(self, experiment_id: str, config_hash: str):
        runs = self.client.search_runs([experiment_id], f"tags.config_hash = '{config_hash}'",
                                       order_by=["attributes.start_time DESC"], max_results=10)
        # prefer a finished run if a hash somehow has several
        return next((r for r in runs if r.info.status == "FINISHED"), runs[0] if runs else None)

    @_retry
    def runs(self, experiment_id: str):
        return self.client.search_runs([experiment_id], max_results=50000)

    @_retry
    def create(self, experiment_id: str, name: str, tags: dict) -> str:
        return self.client.create_run(experiment_id, run_name=name, tags=tags).info.run_id

    @_retry
    def set_status(self, run_id: str, status: str) -> None:
        if status == "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
        else:
            self.client.set_terminated(run_id, status=status)

    @_retry
    def _log_batch(self, run_id, metrics=(), params=(), tags=()):
        self.client.log_batch(run_id, metrics=list(metrics), params=list(params), tags=list(tags))

    def log(self, run_id: str, metrics: dict | None = None, step: int = 0, params: dict | None = None,
            tags: dict | None = None) -> None:
        now = int(time.time() * 1000)
        m = [Metric(k, float(v), now, step) for k, v in (metrics or {}).items()]
        p = [Param(k, str(v)) for k, v in (params or {}).items()]
        t = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        for i in range(0, max(len(m), len(p), len(t), 1), BATCH):
            self._log_batch(run_id, m[i:i + BATCH], p[i:i + BATCH], t[i:i + BATCH])

    @_retry
    def logged_steps(self, run_id: str, key: str = "val_acc") -> set[int]:
        return {m.step for m in self.client.get_metric_history(run_id, key)}

    @_retry
    def log_artifacts(self, run_id: str, folder: Path, artifact_path: str) -> None:
        self.client.log_artifacts(run_id, str(folder), artifact_path)
