"""Every kind of bad grid input stops before any training: exit status 2, one line, no traceback."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from grid_subprocess import DATA_ROOT, TINY, uri
from study.cli import main


class Done:
    def __init__(self, returncode: int, stderr: str):
        self.returncode, self.stderr = returncode, stderr


@pytest.fixture
def study(capsys):
    """`python -m study ...` in-process (the CLI's own error path; no interpreter start-up per case)."""
    def call(*args: str) -> Done:
        code = main(list(args))
        return Done(code, capsys.readouterr().err)
    return call


def _grid(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _ok(**run) -> dict:
    return {"name": "bad", "defaults": TINY, "grid": [{"method": "none", **run}]}


CASES = {
    "unknown top-level key": ({**_ok(), "defualts": {}}, "unknown key 'defualts'"),
    "unknown run key": (_ok(epoch=3), "unknown key 'epoch'"),
    "unknown architecture": (_ok(arch="resnet21"), "unknown architecture 'resnet21'"),
    "unknown method": (_ok(method="pruning"), "unknown method 'pruning'"),
    "unknown method argument": ({"grid": [{"method": "csg", "method_args": {"code_size": 8}}]}, "code_size"),
    "non-positive code dim": ({"grid": [{"method": "csg", "method_args": {"code_dim": 0}}]}, "code_dim"),
    "non-positive slice": ({"grid": [{"method": "csg", "method_args": {"slice": -4}}]}, "slice"),
    "bad layout": ({"grid": [{"method": "csg", "method_args": {"layout": "tiles"}}]}, "layout"),
    "non-positive epochs": (_ok(epochs=0), "epochs"),
    "bad schedule": (_ok(schedule="linear"), "schedule"),
    "impossible target": ({"grid": [{"method": "width", "target_params": 100}]}, "100"),
    "bad target": ({"grid": [{"method": "prune", "target_params": "half"}]}, "target_params"),
    "escaping output folder": ({**_ok(), "output": "../../elsewhere"}, "output"),
    "absolute output folder": ({**_ok(), "output": "/tmp/elsewhere"}, "output"),
    "duplicate runs": ({"grid": [{"method": "none", "seed": [0, 0]}]}, "duplicates"),
    "no runs": ({"name": "empty"}, "no runs"),
    "not a mapping": (["method", "none"], "expected a mapping"),
}


def _assert_refused(done, tmp_path: Path, needle: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert needle in lines[0], lines[0]
    assert not (tmp_path / "out" / "checkpoints").exists()  # nothing trained
    assert not (tmp_path / "mlflow.db").exists()  # nor logged


@pytest.mark.parametrize("case", CASES)
def test_bad_grid_is_refused_before_training(tmp_path, study, case):
    doc, needle = CASES[case]
    grid = _grid(tmp_path, doc)
    done = study("run", str(grid), "--tracking-uri", uri(tmp_path), "--output", str(tmp_path / "out"),
                 "--data-root", DATA_ROOT)
    _assert_refused(done, tmp_path, needle)


def test_invalid_yaml(tmp_path, study):
    grid = tmp_path / "broken.yaml"
    grid.write_text("grid: [\n  - {method: none\n")
    done = study("run", str(grid), "--tracking-uri", uri(tmp_path), "--output", str(tmp_path / "out"))
    _assert_refused(done, tmp_path, "not valid YAML")


def test_missing_grid_file(tmp_path, study):
    done = study("run", str(tmp_path / "nope.yaml"), "--tracking-uri", uri(tmp_path))
    _assert_refused(done, tmp_path, "no such grid file")


def _data_copy(tmp_path: Path, spoil: str | None = None, drop: str | None = None) -> Path:
    """A data root whose files link to the real ones, with one file spoiled or missing."""
    src = Path(DATA_ROOT) / "cifar-10-batches-bin"
    dst = tmp_path / "data" / "cifar-10-batches-bin"
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name == drop:
            continue
        if f.name == spoil:
            data = bytearray(f.read_bytes()[:4096])
            data[100] ^= 0xFF
            (dst / f.name).write_bytes(bytes(data))
        else:
            os.symlink(f, dst / f.name)
    return dst.parent


@pytest.mark.parametrize("how", ["corrupt", "missing"])
def test_corrupt_or_missing_data_file_is_named_with_its_md5(tmp_path, data_root, study, how):
    root = _data_copy(tmp_path, spoil="data_batch_3.bin" if how == "corrupt" else None,
                      drop="data_batch_3.bin" if how == "missing" else None)
    grid = _grid(tmp_path, _ok())
    done = study("run", str(grid), "--tracking-uri", uri(tmp_path), "--output", str(tmp_path / "out"),
                 "--data-root", str(root))
    _assert_refused(done, tmp_path, "data_batch_3.bin")
    assert "942cd6a4bcdd0dd3c604fbe906cb4421" in done.stderr  # the official md5 of that file


def test_unwritable_output_folder(tmp_path, data_root, study):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    grid = _grid(tmp_path, _ok())
    done = study("run", str(grid), "--tracking-uri", uri(tmp_path), "--output", str(blocker / "out"),
                 "--data-root", DATA_ROOT)
    _assert_refused(done, tmp_path, "not writable")
