"""Shared fixtures: where the real data and the authors' checkpoints are, and a throwaway MLflow store.

Data and checkpoints are looked up in `STUDY_DATA_ROOT` (default `<repo>/../shared/data`) and
`STUDY_AUTHORS_DIR` (default `<repo>/../shared/pretrained/authors`).  When they are missing a test
that needs them is skipped with the reason, except under CI (`CI` set), where it fails instead:
CI must never pass by skipping the real-data tests.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

# The suite runs in one pytest-xdist worker per core (tests/run.sh: `-n auto`), and the cores are shared
# out among the workers: each test process (and each `python -m study ...` it starts) gets its share,
# at most two threads.  Training the tiny test networks on one thread per worker uses the cores better
# than two threads in one process.  On a loaded machine OpenMP's default spin-waiting makes two threads
# ~100x slower than one on small convolutions; a passive wait policy avoids that.
# Both must be in the environment before torch (and its OpenMP runtime) is first imported.
THREADS = max(1, min(2, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
os.environ.setdefault("MKL_NUM_THREADS", str(THREADS))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# Ctrl-C must reach the tests (and the processes they start) as it does from a terminal.  A shell that
# starts the suite in the background (`nohup ... &`) sets SIGINT to "ignore", Python then installs no
# KeyboardInterrupt handler, and every child inherits the ignoring: the Ctrl-C tests would see nothing.
# A handler (unlike "ignore") is reset to the default in each child, which then installs its own.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config, items):
    """Files with a slow (real-data) test run first.  pytest-xdist hands each worker whole files in this
    order, so the longest files start at once instead of finishing alone on one core at the end."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: the order within each group stays


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def need(ok: bool, why: str) -> None:
    """Skip (or, under CI, fail) when a precondition of a test does not hold."""
    if ok:
        return
    if in_ci():
        pytest.fail(f"{why} (required under CI)")
    pytest.skip(why)


def shared_data_root() -> Path:
    """Where the tests look for CIFAR-10: `STUDY_DATA_ROOT`, else `../shared/data` beside the repository."""
    return Path(os.environ.get("STUDY_DATA_ROOT") or REPO.parent / "shared" / "data")


def shared_authors_dir() -> Path:
    """Where the tests look for the authors' checkpoints: `STUDY_AUTHORS_DIR`, else `../shared/pretrained/authors`."""
    return Path(os.environ.get("STUDY_AUTHORS_DIR") or REPO.parent / "shared" / "pretrained" / "authors")


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = shared_data_root()
    need((root / "cifar-10-batches-bin").is_dir() or (root / "cifar-10-batches-py").is_dir(),
         f"CIFAR-10 not found under {root} (set STUDY_DATA_ROOT to a folder holding "
         "cifar-10-batches-bin/ or cifar-10-batches-py/)")
    return root


@pytest.fixture(scope="session")
def cifar(data_root):
    from study.data.cifar import load_cifar10

    return load_cifar10(data_root)


@pytest.fixture(scope="session")
def authors_dir() -> Path:
    d = shared_authors_dir()
    need((d / "RN56_ORG.t7").is_file() and (d / "RN56_1616-128.t7").is_file(),
         f"the authors' checkpoints are not in {d} (set STUDY_AUTHORS_DIR)")
    return d


@pytest.fixture
def tmp_store(tmp_path) -> str:
    """A fresh embedded MLflow store (SQLite file) in the test's temporary folder."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def run_cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m study ARGS` in a subprocess from the repo root, as a user would type it."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([PYTHON, "-m", "study", *map(str, args)], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def cli():
    """`cli("params", "--arch", ...)` runs `python -m study ...` and returns the CompletedProcess."""
    return run_cli


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Crash(RuntimeError):
    """Raised by a test's callback to stop training at a chosen point, as a crash would."""


def without_timing(history: list[dict]) -> list[dict]:
    """A run's per-epoch history without its wall-clock entries: what must match bitwise between two runs."""
    return [{k: v for k, v in e.items() if k != "epoch_seconds"} for e in history]


def statsmodels_contrast(data, formula: str, weights: dict):
    """statsmodels' own `t_test` of a contrast over the configurations (`group`: weight), fitted from scratch:
    the reference an analysis contrast must equal."""
    import numpy as np
    import statsmodels.formula.api as smf

    fit = smf.ols(formula, data=data).fit()
    names = list(fit.params.index)
    L = np.zeros(len(names))
    for group, w in weights.items():
        if f"C(group)[T.{group}]" in names:  # treatment coding: the reference configuration has no column
            L[names.index(f"C(group)[T.{group}]")] = w
    return fit.t_test(L)
