"""MLflow bookkeeping for runs: one MLflow run per config hash, resumed in place, logged exactly once.

The default store is embedded: a SQLite file in the project (`mlflow.db`) with artifacts beside it
(`mlartifacts/`), created on first use, no server to start.  Several worker processes may write to
it at once; SQLite then answers "database is locked" now and then.  With `--tracking-uri http://...`
the server may go away and come back (a restart, a network blip).  Both are transient failures:
every store call, through the `Tracker` or through its `client`, is retried with exponential backoff
(capped at 5 s) for at most `retry_seconds` of continuous failure (`--tracking-retry-seconds`, or
`STUDY_TRACKING_RETRY_SECONDS`, default 600), and then raises `TrackingUnavailable`.
(`tests/test_scaleout.py`, `tests/test_tracking_outage.py`.)

Epoch metrics do not wait for the store: `log(..., wait=False)` queues them, and one background
thread writes the queue in order, retrying as above, while training goes on.  Every other write
first waits for the queue to drain, so the store sees everything in the order it was logged.  A
write that is repeated because its answer was lost sends the same metric objects (same timestamps),
which the store de-duplicates: each value lands once.  If the store stays away past the bound the
next log raises `TrackingUnavailable`; the runner then marks the run interrupted in its checkpoint
folder, and the next start resumes it and logs the epochs the store never got (they are in the
checkpoint's history), once each.

For http stores the MLflow client's own retries are turned off (`MLFLOW_HTTP_REQUEST_MAX_RETRIES=0`,
unless set) so that the bound above is the one that holds.

Ctrl-C is held back for the length of each store call made on the main thread: a KeyboardInterrupt
raised inside SQLAlchemy skips its rollback (it catches only `Exception`) and leaves a write lock
that no later client could take, so the interrupt is delivered just after the call instead.
"""
from __future__ import annotations

import collections
import functools
import os
import random
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from study import schema
from study.args import non_negative_seconds
from study.env import PROJECT
from study.schema import default_tracking_uri

BATCH = 900  # MLflow accepts at most 1000 entries per log_batch
RETRY_ENV = "STUDY_TRACKING_RETRY_SECONDS"
DEFAULT_RETRY_SECONDS = 600.0
MAX_BACKOFF = 5.0
HTTP_CLIENT_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}


class TrackingUnavailable(RuntimeError):
    """The tracking store did not answer for longer than the retry bound."""


def default_retry_seconds() -> float:
    text = os.environ.get(RETRY_ENV, "").strip()
    return non_negative_seconds(text) if text else DEFAULT_RETRY_SECONDS  # 0: one attempt, no retry


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


_TRANSIENT = ("database is locked", "locked", "busy", "connection", "timed out", "timeout",
              "temporarily unavailable", "max retries exceeded", "remote end closed", "reset by peer",
              "broken pipe")
# gateway errors by their HTTP status code, as a whole number: run ids are hex and often hold "502"
_GATEWAY = re.compile(r"(?<![0-9a-f])50[234](?![0-9a-f])")


def _transient(e: Exception) -> bool:
    text = str(e).lower()
    return any(s in text for s in _TRANSIENT) or bool(_GATEWAY.search(text))


def short_reason(e: BaseException) -> str:
    """The part of a (long, nested) client error that says what happened, on one line."""
    text = str(e)
    for pattern in (r"\[Errno -?\d+\] [^'\")]+", r"Read timed out[^'\")]*", r"Name or service not known",
                    r"status code \d+[^'\")]*", r"database is locked"):
        m = re.search(pattern, text)
        if m:
            return m.group(0).strip(" .")
    first = text.splitlines()[0] if text else type(e).__name__
    return first[:200]


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


def call_with_retry(fn, *a, retry_seconds: float = DEFAULT_RETRY_SECONDS, what: str = "the tracking store",
                    stop: threading.Event | None = None, **kw):
    """`fn(*a, **kw)`, retried with backoff while it fails transiently, for at most `retry_seconds`
    from the first failure; then `TrackingUnavailable`.  `stop` (set) ends the waiting early."""
    first_failure, attempt = None, 0
    while True:
        try:
            return _without_interrupt(fn, *a, **kw)
        except TrackingUnavailable:
            raise  # an inner call already waited its bound
        except Exception as e:  # sqlalchemy's OperationalError arrives wrapped or bare
            if not _transient(e):
                raise
            now = time.monotonic()
            first_failure = now if first_failure is None else first_failure
            left = retry_seconds - (now - first_failure)
            if left <= 0 or (stop is not None and stop.is_set()):
                raise TrackingUnavailable(f"{what} did not answer for {now - first_failure:.0f} s "
                                          f"({short_reason(e)})") from e
            delay = min(left, min(MAX_BACKOFF, 0.05 * 2 ** attempt) * (0.5 + random.random()))
            if stop is not None:
                stop.wait(delay)
            else:
                time.sleep(delay)
            attempt += 1


def unreachable(uri: str, timeout: float = 10.0) -> str | None:
    """Why the tracking server at `uri` does not answer one request (no retry), or None when it does.
    Only servers (http, https) are asked; an embedded store is created on first use."""
    if not is_http(uri):
        return None
    keys = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({keys[0]: "0", keys[1]: str(max(1, int(timeout)))})
    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        return None
    except Exception as e:  # noqa: BLE001  (connection errors, HTTP errors, a server that is not MLflow)
        return short_reason(e)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _retry(write: bool):
    """A Tracker method as one store call with the tracker's bounded retry; a write waits for the
    queued epoch metrics first, so that the store sees writes in the order they were made."""
    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(self, *a, **kw):
            if write:
                self.flush()
            return self.call(fn, self, *a, **kw)
        return wrapper
    return decorate


class _RetryingClient:
    """`MlflowClient` whose every method call goes through the tracker's bounded retry (for code that
    talks to the client directly, e.g. `study.mlflow_ui`)."""

    def __init__(self, client: MlflowClient, tracker: "Tracker"):
        object.__setattr__(self, "_client", client)
        object.__setattr__(self, "_tracker", tracker)

    def __getattr__(self, name):
        value = getattr(self._client, name)
        if not callable(value) or name.startswith("_"):
            return value

        @functools.wraps(value)
        def retried(*a, **kw):
            return self._tracker.call(value, *a, **kw)
        return retried

    def __setattr__(self, name, value):  # e.g. a test replacing one method
        object.__setattr__(self, name, value)


def current(runs) -> dict:
    """Each configuration's current run among `runs`, by config hash: of the runs that `study retrain`
    did not set aside, a FINISHED one if there is one (the newest), else the newest."""
    out = {}
    for run in sorted(runs, key=lambda r: r.info.start_time or 0, reverse=True):
        h = run.data.tags.get("config_hash")
        if not h or schema.RETRAINED_TAG in run.data.tags:
            continue
        if h not in out or (run.info.status == "FINISHED" and out[h].info.status != "FINISHED"):
            out[h] = run
    return out


class Tracker:
    def __init__(self, uri: str | None = None, retry_seconds: float | None = None):
        self.uri = uri or default_tracking_uri()
        self.retry_seconds = float(retry_seconds) if retry_seconds is not None else default_retry_seconds()
        if is_http(self.uri):
            for key, value in HTTP_CLIENT_DEFAULTS.items():
                os.environ.setdefault(key, value)
        self.client = _RetryingClient(MlflowClient(tracking_uri=self.uri), self)
        self._queue: collections.deque = collections.deque()  # (run_id, [Metric]) not yet in the store
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self._failure: Exception | None = None

    # -- calls ----------------------------------------------------------------------------------
    def call(self, fn, *a, **kw):
        """`fn(*a, **kw)` with this tracker's bounded retry."""
        return call_with_retry(fn, *a, retry_seconds=self.retry_seconds, what=self.uri, **kw)

    @_retry(write=False)
    def existing_experiment(self, name: str) -> str | None:
        exp = self.client._client.get_experiment_by_name(name)
        return exp.experiment_id if exp is not None else None

    @_retry(write=False)
    def experiment(self, name: str) -> str:
        client = self.client._client
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = schema.artifact_location(self.uri, name)  # an embedded store's: beside it, not in cwd
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException as e:  # another worker created it first
            if _transient(e):
                raise
            return client.get_experiment_by_name(name).experiment_id

    @_retry(write=False)
    def find(self, experiment_id: str, config_hash: str):
        """The configuration's current run (`current`), or None."""
        runs = self.client._client.search_runs([experiment_id], f"tags.config_hash = '{config_hash}'",
                                               max_results=50)
        return current(runs).get(config_hash)

    def current_runs(self, experiment_id: str | None) -> dict:
        """Each configuration's current run in the experiment (`current`), by config hash."""
        return current(self.runs(experiment_id)) if experiment_id else {}

    @_retry(write=False)
    def runs(self, experiment_id: str):
        return self.client._client.search_runs([experiment_id], max_results=50000)

    @_retry(write=True)
    def create(self, experiment_id: str, name: str, tags: dict) -> str:
        return self.client._client.create_run(experiment_id, run_name=name, tags=tags).info.run_id

    @_retry(write=True)
    def set_status(self, run_id: str, status: str) -> None:
        if status == "RUNNING":
            self.client._client.update_run(run_id, status="RUNNING")
        else:
            self.client._client.set_terminated(run_id, status=status)

    @_retry(write=True)
    def _log_batch(self, run_id, metrics=(), params=(), tags=()):
        self.client.log_batch(run_id, metrics=list(metrics), params=list(params), tags=list(tags))

    def log(self, run_id: str, metrics: dict | None = None, step: int = 0, params: dict | None = None,
            tags: dict | None = None, wait: bool = True) -> None:
        """Write metrics (at `step`), params and tags.  `wait=False` (metrics only) queues them for the
        background writer and returns at once; it raises `TrackingUnavailable` if the writer gave up."""
        now = int(time.time() * 1000)
        m = [Metric(k, float(v), now, step) for k, v in (metrics or {}).items()]
        p = [Param(k, str(v)) for k, v in (params or {}).items()]
        t = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        if not wait:
            if p or t:
                raise ValueError("only metrics can be written later (wait=False)")
            self._enqueue(run_id, m)
            return
        for i in range(0, max(len(m), len(p), len(t), 1), BATCH):
            self._log_batch(run_id, m[i:i + BATCH], p[i:i + BATCH], t[i:i + BATCH])

    def logged_steps(self, run_id: str, key: str = "val_acc") -> set[int]:
        return set(self.logged_at(run_id, key))

    @_retry(write=False)
    def logged_at(self, run_id: str, key: str = "val_acc") -> dict[int, float]:
        """Each step `key` was logged at, and when (unix seconds; the latest where a step was logged twice)."""
        at: dict[int, float] = {}
        for m in self.client._client.get_metric_history(run_id, key):
            at[m.step] = max(at.get(m.step, 0.0), m.timestamp / 1000)
        return at

    @_retry(write=True)
    def log_artifacts(self, run_id: str, folder: Path, artifact_path: str) -> None:
        self.client._client.log_artifacts(run_id, str(folder), artifact_path)

    # -- the queue of epoch metrics -------------------------------------------------------------
    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _enqueue(self, run_id: str, metrics: list) -> None:
        self._raise_failure()
        with self._cond:
            for i in range(0, len(metrics), BATCH):
                self._queue.append((run_id, metrics[i:i + BATCH]))
            self._cond.notify_all()
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_queue, name="tracking-writer", daemon=True)
                self._writer.start()

    def _write_queue(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stop.is_set():
                    self._cond.wait()
                if self._stop.is_set():
                    return  # what is left is in the checkpoint's history: the next start logs it
                run_id, metrics = self._queue[0]
            try:
                call_with_retry(self.client._client.log_batch, run_id, metrics=metrics,
                                retry_seconds=self.retry_seconds, what=self.uri, stop=self._stop)
            except Exception as e:  # noqa: BLE001  (handed to the main thread at its next log or flush)
                with self._cond:
                    self._failure = e
                    self._cond.notify_all()
                return
            with self._cond:
                self._queue.popleft()
                self._cond.notify_all()

    def pending(self) -> int:
        """Queued metric batches not yet in the store."""
        with self._cond:
            return len(self._queue)

    def flush(self) -> None:
        """Wait until every queued metric is in the store; `TrackingUnavailable` if the writer gave up."""
        with self._cond:
            while self._queue and self._failure is None and not self._stop.is_set():
                self._cond.wait(0.5)
        self._raise_failure()

    def close(self) -> None:
        """Stop the background writer (what it has not written stays in the checkpoint's history)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._writer is not None:
            self._writer.join(timeout=2)
