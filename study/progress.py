"""Live progress of a grid, read from the MLflow store: the store is the source of truth.

`Watcher.poll()` reads what every run of a grid has logged so far (status, the epochs it logged, their
validation accuracy and duration), whoever is training it: this process, `--jobs N` worker processes,
a Dask cluster or SLURM array tasks elsewhere.  Two displays draw a `Snapshot`:

- on a terminal, a rich live table: runs done / running / failed / pending, each running run with its
  epoch and last validation accuracy, and an ETA from the measured epoch times;
- off a terminal (CI, a log file), plain lines: one line per finished epoch, one per finished or
  failed run.

`python -m study run` shows it while the grid trains; `python -m study status GRID --watch` shows it
for a grid running elsewhere.  Both write it to stderr, so stdout keeps the summary table.

The ETA simulates the remaining work on the workers: each running run needs its remaining epochs at
its own median epoch time (less the time already spent in the current epoch); each pending run needs its
epochs at the mean epoch time of runs of the same method and architecture (else of every run, and the
headline counts such runs, whose time is a guess); the
pending runs go, in grid order, to whichever worker frees up first.  A study that spans machines has
epoch times from each of them, and the machine at work now may be several times faster or slower than
the one before it: once an epoch has been logged since the watch began, only such epochs set the pace.
"""
from __future__ import annotations

import heapq
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field

from study import schema

DONE, RUNNING, FAILED, PENDING = "done", "running", "failed", "pending"


@dataclass
class RunProgress:
    name: str
    config_hash: str
    arch: str
    method: str
    epochs: int                      # planned
    state: str = PENDING             # done | running | failed | pending
    status: str = ""                 # the MLflow status, "" when the store has no run yet
    done_epochs: list[int] = field(default_factory=list)
    val_acc: dict[int, float] = field(default_factory=dict)
    epoch_seconds: dict[int, float] = field(default_factory=dict)
    epoch_logged_at: dict[int, float] = field(default_factory=dict)  # unix seconds, per epoch
    last_epoch_at: float | None = None   # unix seconds of the newest logged epoch
    started_at: float | None = None
    reason: str = ""
    test_acc: float | None = None    # the headline (test at best validation epoch) once done

    @property
    def epoch(self) -> int:
        return max(self.done_epochs, default=0)

    @property
    def last_val(self) -> float | None:
        return self.val_acc.get(self.epoch)

    @property
    def seconds_per_epoch(self) -> float | None:
        """The median: an epoch that spanned a pause (a stopped job, a suspended machine) is an outlier."""
        return self.seconds_per_epoch_since(float("-inf"))

    def seconds_per_epoch_since(self, since: float) -> float | None:
        """The median over the epochs logged at or after `since` (unix seconds)."""
        recent = [s for e, s in self.epoch_seconds.items() if self.epoch_logged_at.get(e, float("-inf")) >= since]
        return statistics.median(recent) if recent else None


@dataclass
class Snapshot:
    grid: str
    runs: list[RunProgress]
    workers: int
    at: float
    eta_seconds: float | None

    def count(self, state: str) -> int:
        return sum(r.state == state for r in self.runs)

    @property
    def finished(self) -> bool:
        return all(r.state in (DONE, FAILED) for r in self.runs)

    @property
    def epochs_done(self) -> int:
        return sum(r.epochs if r.state == DONE else min(r.epoch, r.epochs) for r in self.runs)

    @property
    def epochs_total(self) -> int:
        return sum(r.epochs for r in self.runs)

    def headline(self) -> str:
        parts = [f"{self.count(DONE)} done", f"{self.count(RUNNING)} running", f"{self.count(FAILED)} failed",
                 f"{self.count(PENDING)} pending"]
        return f"{', '.join(parts)} of {len(self.runs)}; ETA {self.eta()}"

    def eta(self) -> str:
        text = eta_text(self.eta_seconds)
        guessed = len(untimed(self.runs))
        if guessed and self.eta_seconds is not None:
            text += f" (a guess: {guessed} run(s) of a kind not timed yet)"
        return text


def eta_text(seconds: float | None) -> str:
    if seconds is None:
        return "unknown (no epoch measured yet)"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    h, m = divmod(seconds // 60, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m {seconds % 60:02d}s"


# -- reading the store ----------------------------------------------------------------------------
class Watcher:
    """Reads the progress of every run of `grid` from the store at `tracking_uri`."""

    def __init__(self, grid, tracking_uri: str, workers: int | None = None):
        from study.tracking import Tracker

        self.grid = grid
        self.tracker = Tracker(tracking_uri)
        self.workers = workers  # None: as many as are running now (a grid running elsewhere)
        self.since = time.time()  # epochs logged from now on were timed on the machines at work now
        self._final: dict[str, RunProgress] = {}  # runs that ended: their history does not change

    def _history(self, run_id: str, key: str) -> dict[int, tuple[float, int]]:
        out: dict[int, tuple[float, int]] = {}
        for m in self.tracker.client.get_metric_history(run_id, key):
            if m.step not in out or m.timestamp >= out[m.step][1]:
                out[m.step] = (m.value, m.timestamp)
        return out

    def poll(self) -> Snapshot:
        by_hash = self.tracker.current_runs(self.tracker.existing_experiment(self.grid.name))
        rows = []
        for cfg in self.grid.runs:
            h = cfg.hash()
            run = by_hash.get(h)
            key = f"{h}:{run.info.run_id}:{run.info.status}" if run is not None else ""
            if key in self._final:
                rows.append(self._final[key])
                continue
            p = RunProgress(cfg.name, h, cfg.arch, cfg.method, int(cfg.epochs))
            if run is not None:
                p.status = run.info.status
                p.started_at = run.info.start_time / 1000 if run.info.start_time else None
                p.reason = run.data.tags.get("failure_reason", "")
                p.test_acc = run.data.metrics.get(schema.HEADLINE)
                val = self._history(run.info.run_id, "val_acc")
                secs = self._history(run.info.run_id, "epoch_seconds")
                p.done_epochs = sorted(e for e in val if 1 <= e <= p.epochs)
                p.val_acc = {e: v for e, (v, _) in val.items()}
                p.epoch_seconds = {e: v for e, (v, _) in secs.items() if 1 <= e <= p.epochs}
                p.epoch_logged_at = {e: ts / 1000 for e, (_, ts) in secs.items() if 1 <= e <= p.epochs}
                if val:
                    p.last_epoch_at = max(ts for _, ts in val.values()) / 1000
                p.state = {"FINISHED": DONE, "FAILED": FAILED, "RUNNING": RUNNING}.get(run.info.status, PENDING)
                if p.state in (DONE, FAILED):
                    self._final[key] = p
            rows.append(p)
        now = time.time()
        workers = self.workers or max(1, sum(r.state == RUNNING for r in rows))
        return Snapshot(self.grid.name, rows, workers, now, estimate(rows, workers, now, since=self.since))


def untimed(rows: list[RunProgress]) -> list[RunProgress]:
    """Unfinished runs of a kind (architecture and method) of which no run has a timed epoch yet.

    The ETA gives them the mean pace of every timed run, which can be far off: a ShuffleNetV2 0.5
    epoch costs 1.6 times a ResNet-20 one in bf16 on an AMD EPYC.  The headline says how many there
    are, so that the ETA is read as a guess until each kind has been timed."""
    timed = {(r.arch, r.method) for r in rows if r.seconds_per_epoch}
    return [r for r in rows if r.state in (RUNNING, PENDING) and (r.arch, r.method) not in timed]


def estimate(rows: list[RunProgress], workers: int, now: float, since: float | None = None) -> float | None:
    """Seconds until the last run ends (see the module docstring), None before any epoch is measured.

    `since`: where any epoch was logged at or after it, only those epochs measure the pace."""
    pace = {id(r): r.seconds_per_epoch for r in rows}
    if since is not None:
        recent = {id(r): r.seconds_per_epoch_since(since) for r in rows}
        if any(recent.values()):
            pace = recent
    measured = [r for r in rows if pace[id(r)]]
    if not measured:
        return None if any(r.state in (RUNNING, PENDING) for r in rows) else 0.0
    overall = statistics.fmean(pace[id(r)] for r in measured)
    by_kind: dict[tuple[str, str], list[float]] = {}
    for r in measured:
        by_kind.setdefault((r.arch, r.method), []).append(pace[id(r)])

    def per_epoch(r: RunProgress) -> float:
        if pace[id(r)]:
            return pace[id(r)]
        same = by_kind.get((r.arch, r.method))
        return statistics.fmean(same) if same else overall

    busy = []
    for r in rows:
        if r.state != RUNNING:
            continue
        left = max(0, r.epochs - r.epoch) * per_epoch(r)
        into_epoch = now - (r.last_epoch_at or r.started_at or now)
        busy.append(max(0.0, left - min(into_epoch, per_epoch(r))))
    free = [0.0] * max(0, workers - len(busy))
    heap = sorted(busy + free)[: max(workers, len(busy))] or [0.0]
    heapq.heapify(heap)
    for r in rows:
        if r.state == PENDING:
            start = heapq.heappop(heap)
            heapq.heappush(heap, start + max(0, r.epochs - r.epoch) * per_epoch(r))
    return max(heap)


# -- displays -------------------------------------------------------------------------------------
class PlainDisplay:
    """One line per newly finished epoch, and one per run that ends; nothing else."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.seen: set[tuple[str, int]] = set()
        self.ended: set[str] = set()
        self.primed = False

    def update(self, snap: Snapshot) -> None:
        lines = []
        for r in snap.runs:
            for e in r.done_epochs:
                if (r.config_hash, e) in self.seen:
                    continue
                self.seen.add((r.config_hash, e))
                secs = r.epoch_seconds.get(e)
                val = r.val_acc.get(e)
                lines.append(f"{r.name} epoch {e}/{r.epochs}"
                             + (f" val_acc {val:.2f}" if val is not None else "")
                             + (f" ({secs:.0f} s)" if secs is not None else ""))
            if r.state in (DONE, FAILED) and r.config_hash not in self.ended:
                self.ended.add(r.config_hash)
                if self.primed or r.state == FAILED:
                    lines.append(f"{r.name} {'FINISHED' if r.state == DONE else 'FAILED'}"
                                 + (f" test_acc_at_best_val {r.test_acc:.2f}" if r.test_acc is not None else "")
                                 + (f" ({r.reason})" if r.reason and r.state == FAILED else ""))
        if not self.primed:
            # what was there before we started watching: one line, not a replay of every epoch
            self.primed = True
            if lines:
                lines = [f"already logged: {sum(len(r.done_epochs) for r in snap.runs)} epoch(s) "
                         f"in {sum(bool(r.done_epochs) for r in snap.runs)} run(s)"]
        stamp = time.strftime("%H:%M:%S", time.localtime(snap.at))
        for line in lines:
            print(f"[{stamp}] {snap.grid}: {line} | {snap.headline()}", file=self.stream, flush=True)

    def close(self, snap: Snapshot | None) -> None:
        if snap is not None:
            self.update(snap)


class RichDisplay:
    """A live table on the terminal (rich)."""

    def __init__(self, stream=None):
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=stream or sys.stderr)
        self.live = Live(console=self.console, refresh_per_second=2, transient=False,
                         redirect_stdout=False, redirect_stderr=False)
        self.live.start()

    def render(self, snap: Snapshot):
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        head = Text.assemble((f"grid {snap.grid}  ", "bold"), (f"{snap.count(DONE)} done", "green"), ", ",
                             (f"{snap.count(RUNNING)} running", "cyan"), ", ",
                             (f"{snap.count(FAILED)} failed", "red" if snap.count(FAILED) else ""), ", ",
                             f"{snap.count(PENDING)} pending of {len(snap.runs)}   ",
                             ("ETA ", "bold"), snap.eta())
        total = Table.grid(padding=(0, 1))
        total.add_row(ProgressBar(total=max(1, snap.epochs_total), completed=snap.epochs_done, width=40),
                      f"{snap.epochs_done}/{snap.epochs_total} epochs")
        table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
        for col, just in (("run", "left"), ("epoch", "right"), ("", "left"), ("val_acc", "right"),
                          ("s/epoch", "right"), ("state", "left")):
            table.add_column(col, justify=just)
        for r in snap.runs:
            if r.state not in (RUNNING, FAILED) and not (r.state == PENDING and r.done_epochs):
                continue
            state = r.state if r.state != FAILED else f"failed: {r.reason}"[:60]
            quiet = snap.at - (r.last_epoch_at or r.started_at or snap.at)
            if r.state == RUNNING and quiet > max(3 * (r.seconds_per_epoch or 0), 600):
                state = f"running? no epoch for {eta_text(quiet)} (a worker that died leaves RUNNING)"
            table.add_row(r.name, f"{r.epoch}/{r.epochs}",
                          ProgressBar(total=max(1, r.epochs), completed=r.epoch, width=20),
                          f"{r.last_val:.2f}" if r.last_val is not None else "-",
                          f"{r.seconds_per_epoch:.0f}" if r.seconds_per_epoch else "-",
                          Text(state, style={RUNNING: "cyan", FAILED: "red"}.get(r.state, "yellow")
                               if not state.startswith("running?") else "yellow"))
        return Group(head, total, table)

    def update(self, snap: Snapshot) -> None:
        self.live.update(self.render(snap), refresh=True)

    def close(self, snap: Snapshot | None) -> None:
        if snap is not None:
            self.update(snap)
        self.live.stop()


def make_display(mode: str = "auto", stream=None):
    """`auto`: rich on a terminal, plain lines elsewhere; `rich`, `plain`; `none` shows nothing."""
    stream = stream or sys.stderr
    if mode == "none":
        return None
    if mode == "auto":
        mode = "rich" if stream.isatty() else "plain"
    return RichDisplay(stream) if mode == "rich" else PlainDisplay(stream)


def watch(grid, tracking_uri: str, mode: str = "auto", interval: float = 5.0, workers: int | None = None,
          until_finished: bool = True) -> Snapshot | None:
    """`status --watch`: draw the grid's progress until every run has ended (or Ctrl-C)."""
    watcher, display, snap = Watcher(grid, tracking_uri, workers), make_display(mode), None
    try:
        while True:
            snap = watcher.poll()
            if display:
                display.update(snap)
            if until_finished and snap.finished:
                return snap
            time.sleep(interval)
    finally:
        if display:
            display.close(None)


class Monitor:
    """`run`'s display: a thread that polls the store while the grid trains in this process or others."""

    def __init__(self, grid, tracking_uri: str, workers: int, mode: str = "auto", interval: float = 2.0):
        self.watcher = Watcher(grid, tracking_uri, workers)
        self.display = make_display(mode)
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self.last: Snapshot | None = None

    def _poll(self) -> None:
        try:
            self.last = self.watcher.poll()
        except Exception:  # a busy store: try again at the next tick; progress never fails a grid
            return
        if self.display:
            self.display.update(self.last)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._poll()
            self._stop.wait(self.interval)

    def __enter__(self):
        if self.display:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.display:
            self._thread.join(timeout=30)
            self._poll()  # the epochs logged since the last tick
            self.display.close(None)
        return False
