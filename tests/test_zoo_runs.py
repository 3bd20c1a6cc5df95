"""Every architecture beyond ResNet-20 trains through `python -m study run` and lands in MLflow.

Plain and CSG (the authors' policy) for each: the CIFAR ones on real CIFAR-10 slices, the ImageNet
ResNets on a generated ImageFolder tree at `image_size` 64, the DeepLabs on a generated VOC tree at
`image_size` 96.  One grid file per task, run in-process through `study.cli.main` (no interpreter
start-up), one epoch of two steps each.  Each run must be FINISHED in the SQLite store with its
per-epoch metrics, its parameter count equal to the pinned one (tests/test_zoo.py) and its model.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from grid_subprocess import DATA_ROOT, uri
from study.cli import main
from test_zoo import COUNTS
from visiontrees import imagenet_tree, voc_tree

COMMON = {"epochs": 1, "lr": 0.01, "seed": 0, "schedule": "onecycle", "warmup_epochs": 0.0}

# grid name -> (task, defaults, per-task metrics logged each epoch)
GRIDS = {
    "zoo-cifar": ("cifar10", {**COMMON, "batch_size": 32, "train_subset": 64, "val_size": 64,
                              "test_subset": 32}, ("val_acc", "test_acc", "train_acc")),
    "zoo-imagenet": ("imagenet", {**COMMON, "image_size": 64, "batch_size": 4, "train_subset": 8, "val_size": 3,
                                  "workers": 0}, ("val_acc", "test_acc", "val_top5", "test_top5")),
    "zoo-voc": ("voc", {**COMMON, "image_size": 96, "batch_size": 2, "train_subset": 4, "val_size": 1,
                        "workers": 0}, ("val_acc", "test_acc", "val_miou", "test_miou")),
}
ARCHS = {
    "zoo-cifar": ["densenet_bc_k36", "densenet_bc_k48", "mobilenetv2", "shufflenetv2_0_5"],
    "zoo-imagenet": ["imagenet_resnet18", "imagenet_resnet50"],
    "zoo-voc": ["deeplabv3_resnet50", "deeplabv3_resnet101"],
}
CASES = [(grid, arch, method) for grid, archs in ARCHS.items() for arch in archs for method in ("none", "csg")]


def _blocks(archs: list[str]) -> list[dict]:
    return [{"arch": arch, "method": "none"} for arch in archs] + \
           [{"arch": arch, "method": "csg", "method_args": COUNTS[arch][1]} for arch in archs]


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    return {"cifar10": DATA_ROOT,
            "imagenet": str(imagenet_tree(tmp_path_factory.mktemp("imagenet"))),
            "voc": str(voc_tree(tmp_path_factory.mktemp("voc")))}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def grid_run(store, trees):
    """Run each task's grid once (lazily, on first use); grid name -> exit status."""
    done: dict[str, int] = {}
    threads = torch.get_num_threads()

    def run(name: str) -> int:
        if name not in done:
            task, defaults, _ = GRIDS[name]
            path = store / f"{name}.yaml"
            path.write_text(yaml.safe_dump({"name": name, "defaults": defaults, "grid": _blocks(ARCHS[name])}))
            # one thread: on the shared two-core machine, two threads run up to 3x slower under load
            done[name] = main(["run", str(path), "--data-root", trees[task], "--tracking-uri", uri(store),
                               "--output", str(store / "out"), "--threads", "1"])
        return done[name]
    yield run
    torch.set_num_threads(threads)  # the in-process runs set it for the whole test process


def _find(store, grid: str, arch: str, method: str):
    client = MlflowClient(uri(store))
    exp = client.get_experiment_by_name(grid)
    assert exp is not None, f"experiment {grid} was not created"
    found = [r for r in client.search_runs([exp.experiment_id])
             if r.data.params.get("arch") == arch and r.data.params.get("method") == method]
    assert len(found) == 1, f"{arch} {method}: {len(found)} runs"
    return client, found[0]


@pytest.mark.slow
@pytest.mark.parametrize("grid,arch,method", CASES, ids=[f"{a}-{m}" for _, a, m in CASES])
def test_arch_trains_and_logs(store, grid_run, grid, arch, method):
    code = grid_run(grid)
    client, run = _find(store, grid, arch, method)
    assert run.info.status == "FINISHED", run.data.tags.get("failure_reason")
    assert code == 0  # every run of the grid finished
    # per-epoch metrics, one value at step 1 (the only epoch)
    for key in GRIDS[grid][2] + ("train_loss", "lr", "epoch_seconds"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [1], key
    metrics = run.data.metrics
    primary = "miou" if grid == "zoo-voc" else "acc"
    for key in (f"final_test_{primary}", f"test_{primary}_at_best_val", f"best_val_{primary}"):
        assert 0.0 <= metrics[key] <= 100.0, key
    # the parameter count is the architecture's pinned one, plain or with CSG
    plain, args, csg = COUNTS[arch]
    assert metrics["params_total"] == (plain if method == "none" else csg)
    if method == "csg":
        assert run.data.params["slice"] == str(args["slice"]) and run.data.params["code_dim"] == str(args["code_dim"])
        assert run.data.params["policy"] == "authors"
    image_size = GRIDS[grid][1].get("image_size")
    assert run.data.params["image_size"] == str(image_size)
    # the model and its config are stored as artifacts
    files = {f.path: f for f in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/model.pt", "model/config.json"} <= set(files)
    assert files["model/model.pt"].file_size > 4 * (csg if method == "csg" else plain) * 0.9
    local = client.download_artifacts(run.info.run_id, "model/config.json", str(store))
    config = json.loads(Path(local).read_text())
    assert config["arch"] == arch and config["image_size"] == image_size


def test_imagenet_grid_without_data_is_refused(tmp_path, capsys):
    """An ImageNet arch and an empty data root: one line naming the missing folder, exit 2, nothing run."""
    path = tmp_path / "inet.yaml"
    path.write_text(yaml.safe_dump({"name": "inet", "defaults": {**GRIDS["zoo-imagenet"][1]},
                                    "grid": [{"arch": "imagenet_resnet18", "method": "none"}]}))
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["run", str(path), "--data-root", str(empty), "--tracking-uri", uri(tmp_path),
                 "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"{empty / 'train'}: missing") and "ImageFolder" in err[0]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "out" / "checkpoints").exists()


def test_cifar_image_size_is_refused(tmp_path, capsys):
    """image_size is never a dead flag: on CIFAR-10 anything but 32 stops the grid before any work."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "c", "defaults": {**GRIDS["zoo-cifar"][1], "image_size": 64},
                                    "grid": [{"arch": "mobilenetv2", "method": "none"}]}))
    code = main(["run", str(path), "--data-root", DATA_ROOT, "--tracking-uri", uri(tmp_path),
                 "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "mobilenetv2-plain-s0" in err[0] and "image_size 64" in err[0] and "CIFAR-10" in err[0]
    assert not (tmp_path / "mlflow.db").exists()
