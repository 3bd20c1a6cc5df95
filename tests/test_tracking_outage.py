"""A real `mlflow server` that goes away in the middle of a grid and comes back on the same database.

Short outages cost nothing: epoch metrics are queued while training goes on and written, in order
and once each, when the server answers again.  An outage longer than `--tracking-retry-seconds`
stops the run, marked interrupted in its checkpoint folder; the next start resumes it and logs what
the store missed.  Everything is asserted on the store's contents.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import free_port
from grid_subprocess import DATA_ROOT, REPO, each_epoch_once, write_grid
from study import checkpoint
from study import grid as grid_mod

pytestmark = pytest.mark.slow
SMALL = dict(train_subset=256, val_size=128, test_subset=128, batch_size=64)


class Server:
    """`mlflow server` on 127.0.0.1 at a fixed port and SQLite file, stopped and started at will."""

    def __init__(self, folder: Path):
        self.port = free_port()
        self.folder, self.proc = folder, None
        self.url = f"http://127.0.0.1:{self.port}"

    def up(self) -> bool:
        try:
            return urllib.request.urlopen(f"{self.url}/health", timeout=2).status == 200
        except OSError:
            return False

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}",
             "--artifacts-destination", str(self.folder / "artifacts"), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300  # a loaded two-core machine takes a minute or more
        while time.time() < deadline and self.proc.poll() is None:
            if self.up():
                return
            time.sleep(0.25)
        self.stop()
        pytest.fail("mlflow server did not come up within 300 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        deadline = time.time() + 30
        while self.up() and time.time() < deadline:  # a worker process may outlive its parent briefly
            time.sleep(0.2)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("server"))
    s.start()
    yield s
    s.stop()


def _launch(grid: Path, out: Path, url: str, *extra: str) -> subprocess.Popen:
    """`python -m study run` in the background, its output in files beside the grid (no pipe to fill)."""
    log = grid.with_suffix(f".{time.monotonic_ns()}.log")
    proc = subprocess.Popen([sys.executable, "-m", "study", "run", str(grid), "--tracking-uri", url,
                             "--output", str(out), "--threads", "1", "--data-root", DATA_ROOT, *extra],
                            cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT)
    proc.log = log
    return proc


def _finish(proc: subprocess.Popen, timeout: float) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return proc.log.read_text()[-4000:]


def _epoch_on_disk(folder: Path) -> int:
    found = checkpoint.candidates(folder)
    return int(found[0].name[5:9]) if found else 0


def _wait(condition, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_server_restart_mid_grid_costs_no_run_and_no_metric(tmp_path, data_root, server):
    epochs = 5
    grid = write_grid(tmp_path, "restart", [{"method": "none"}, {"method": "csg", "method_args": {"code_dim": 16}}],
                      epochs=epochs, **SMALL)
    first = grid_mod.load(grid).runs[0].hash()
    folder = tmp_path / "out" / "checkpoints" / first
    proc = _launch(grid, tmp_path / "out", server.url, "--tracking-retry-seconds", "600")
    _wait(lambda: _epoch_on_disk(folder) >= 1, proc, 600, "the first epoch")
    server.stop()
    stopped_at = _epoch_on_disk(folder)
    # three epoch writes (at least) while the server is away; then it restarts on the same database
    _wait(lambda: _epoch_on_disk(folder) >= min(stopped_at + 3, epochs) or proc.poll() is not None,
          proc, 600, "three epochs without a server")
    assert proc.poll() is None, _finish(proc, 0)  # the run waits for its last metrics to land
    server.start()
    output = _finish(proc, 900)
    assert proc.returncode == 0, output
    each_epoch_once(server.url, "restart", 2, epochs)


def test_a_server_away_past_the_bound_interrupts_the_run_which_resumes_losing_nothing(tmp_path, data_root,
                                                                                       server):
    epochs = 4
    grid = write_grid(tmp_path, "away", [{"method": "none"}], epochs=epochs, **SMALL)
    folder = tmp_path / "out" / "checkpoints" / grid_mod.load(grid).runs[0].hash()
    proc = _launch(grid, tmp_path / "out", server.url, "--tracking-retry-seconds", "2")
    _wait(lambda: _epoch_on_disk(folder) >= 1, proc, 600, "the first epoch")
    server.stop()
    output = _finish(proc, 600)
    assert proc.returncode == 75, output  # interrupted: run it again
    marker = json.loads((folder / "INTERRUPTED").read_text())
    assert "did not answer" in marker["reason"]
    stopped_at = _epoch_on_disk(folder)
    assert 1 <= stopped_at <= epochs and checkpoint.verify(checkpoint.candidates(folder)[0])

    server.start()
    client = MlflowClient(server.url)
    (run,) = client.search_runs([client.get_experiment_by_name("away").experiment_id])
    assert run.info.status == "RUNNING"  # the store could not be told; the checkpoint folder says it
    logged = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_acc"))
    assert logged == list(range(1, len(logged) + 1)) and len(logged) < stopped_at  # the store missed epochs

    again = _launch(grid, tmp_path / "out", server.url)
    output = _finish(again, 900)
    assert again.returncode == 0, output
    (resumed,) = each_epoch_once(server.url, "away", 1, epochs)
    assert resumed.info.run_id == run.info.run_id  # the same MLflow run, continued
    assert not (folder / "INTERRUPTED").exists()
