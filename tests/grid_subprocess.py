"""Helpers for tests that drive whole grids through `python -m study run` in a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from conftest import REPO, shared_data_root
from study import schema


TINY = {  # real CIFAR-10, a few seconds an epoch
    "arch": "resnet20", "epochs": 3, "batch_size": 64, "lr": 0.1, "schedule": "onecycle",
    "warmup_epochs": 1, "train_subset": 512, "val_size": 256, "test_subset": 256,
}


def write_grid(folder: Path, name: str, blocks: list[dict], **defaults) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "defaults": {**TINY, **defaults}, "grid": blocks}))
    return path


def study(*args: str, env: dict | None = None, timeout: float = 600, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "study", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, **popen)


DATA_ROOT = str(shared_data_root())


def grid_args(grid: Path, store: Path, *extra: str) -> list[str]:
    """`run GRID` against the store in `store/`, one torch thread (bitwise-reproducible on CPU)."""
    return ["run", str(grid), "--tracking-uri", uri(store), "--output", str(store / "out"), "--threads", "1",
            "--data-root", DATA_ROOT, *extra]


def popen_grid(grid: Path, store: Path, *extra: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "study", *grid_args(grid, store, *extra)], cwd=REPO, **kw)


def run_grid(grid: Path, store: Path, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return study(*grid_args(grid, store, *extra), timeout=timeout)


def uri(store: Path) -> str:
    return f"sqlite:///{store / 'mlflow.db'}"


def runs(store_uri: str, experiment: str):
    client = MlflowClient(store_uri)
    exp = client.get_experiment_by_name(experiment)
    return client, (client.search_runs([exp.experiment_id]) if exp else [])


def each_epoch_once(store_uri: str, experiment: str, n_runs: int, epochs: int) -> list:
    """One FINISHED MLflow run per config, each with every per-epoch metric at steps 1..epochs exactly once
    and its headline; returns the runs."""
    client, found = runs(store_uri, experiment)
    assert sorted(r.info.status for r in found) == ["FINISHED"] * n_runs
    assert len({r.data.tags["config_hash"] for r in found}) == n_runs
    for r in found:
        for key in schema.EPOCH_METRICS:
            steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, key))
            assert steps == list(range(1, epochs + 1)), (r.info.run_name, key, steps)
        assert schema.HEADLINE in r.data.metrics and "params_total" in r.data.metrics
    return found
