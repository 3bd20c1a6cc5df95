"""Concurrency on the embedded SQLite store, and scale-out through Dask and submitit."""
from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import free_port
from grid_subprocess import DATA_ROOT, each_epoch_once, run_grid, runs, study, uri, write_grid

pytestmark = pytest.mark.slow


def _all_logged(store_uri: str, experiment: str, n_runs: int, epochs: int) -> None:
    found = each_epoch_once(store_uri, experiment, n_runs, epochs)
    assert all(r.data.params["arch"] == "resnet20" for r in found)


def test_four_workers_lose_no_run_and_no_metric(tmp_path, data_root):
    grid = write_grid(tmp_path, "concurrent", [{"method": "none", "seed": [0, 1, 2, 3]},
                                               {"method": "csg", "seed": [0, 1, 2, 3]}],
                      epochs=2, train_subset=128, val_size=128, test_subset=128)
    done = run_grid(grid, tmp_path, "--jobs", "4")
    assert done.returncode == 0, done.stderr
    _all_logged(uri(tmp_path), "concurrent", 8, 2)


@pytest.fixture
def tracking_server(tmp_path):
    """A real `mlflow server` on loopback, as the docs tell a cluster user to start it."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                             "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not come up within 120 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_dask_local_cluster_runs_the_grid_into_a_tracking_server(tmp_path, data_root, tracking_server):
    from dask.distributed import LocalCluster

    grid = write_grid(tmp_path, "dask", [{"method": "none"}, {"method": "csg"}],
                      epochs=1, train_subset=128, val_size=128, test_subset=128)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        done = study("run", str(grid), "--backend", "dask", "--scheduler", cluster.scheduler_address,
                     "--jobs", "2", "--threads", "1", "--tracking-uri", tracking_server,
                     "--output", str(tmp_path / "out"), "--data-root", DATA_ROOT)
    assert done.returncode == 0, done.stderr
    _all_logged(tracking_server, "dask", 2, 1)
    client, found = runs(tracking_server, "dask")
    assert {a.path for a in client.list_artifacts(found[0].info.run_id, "model")} == {"model/model.pt",
                                                                                     "model/config.json"}


def test_submitit_local_executor_runs_the_same_grid(tmp_path, data_root, tracking_server):
    grid = write_grid(tmp_path, "submitit", [{"method": "none"}, {"method": "csg"}],
                      epochs=1, train_subset=128, val_size=128, test_subset=128)
    done = study("run", str(grid), "--backend", "slurm", "--slurm", "cluster=local",
                 "--slurm", f"folder={tmp_path / 'logs'}", "--slurm", "timeout_min=20", "--threads", "1",
                 "--tracking-uri", tracking_server, "--output", str(tmp_path / "out"), "--data-root", DATA_ROOT)
    assert done.returncode == 0, done.stderr + done.stdout
    _all_logged(tracking_server, "submitit", 2, 1)


def test_dask_backend_needs_a_scheduler(tmp_path, data_root):
    grid = write_grid(tmp_path, "noscheduler", [{"method": "none"}])
    done = run_grid(grid, tmp_path, "--backend", "dask")
    assert done.returncode == 2 and "--scheduler" in done.stderr and len(done.stderr.strip().splitlines()) == 1
