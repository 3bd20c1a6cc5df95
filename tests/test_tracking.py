"""A real grid through `python -m study run` into a throwaway MLflow store: what each run records, and
that re-running the same command trains nothing twice."""
from __future__ import annotations

import json
import re

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from study import grid as grid_mod
from study.methods import build
from study.train import summarize

GRID = {
    "name": "tiny",
    "description": "two runs on a sliver of CIFAR-10",
    "defaults": {"arch": "resnet20", "epochs": 2, "batch_size": 128, "lr": 0.05, "schedule": "onecycle",
                 "train_subset": 512, "val_size": 256, "test_subset": 256, "precision": "fp32"},
    "grid": [{"method": "none"}, {"method": "csg", "method_args": {"slice": 16, "code_dim": 72}}],
}
EXPECTED_TOTAL = {"none": 269_722, "csg": 176_698}
EPOCHS = GRID["defaults"]["epochs"]


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory, data_root, cli):
    tmp = tmp_path_factory.mktemp("tracking")
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(GRID))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    argv = ["run", path, "--data-root", data_root, "--tracking-uri", uri, "--output", tmp / "out", "--threads", "1"]
    first = cli(*argv)
    assert first.returncode == 0, first.stdout + first.stderr
    return {"path": path, "uri": uri, "argv": argv, "first": first, "tmp": tmp}


@pytest.fixture(scope="module")
def runs(grid_run):
    client = MlflowClient(grid_run["uri"])
    exp = client.get_experiment_by_name("tiny")
    assert exp is not None
    found = client.search_runs([exp.experiment_id])
    return client, exp, {r.data.params["method"]: r for r in found}


@pytest.mark.slow
def test_runs_are_finished_with_params_and_tags(grid_run, runs):
    client, _, by_method = runs
    assert set(by_method) == {"none", "csg"}
    grid = grid_mod.load(grid_run["path"])
    hashes = {c.method: c.hash() for c in grid.runs}
    for method, run in by_method.items():
        assert run.info.status == "FINISHED"
        p, t = run.data.params, run.data.tags
        assert p["arch"] == "resnet20" and p["method"] == method and p["seed"] == "0"
        assert p["epochs"] == str(EPOCHS) and p["train_subset"] == "512"
        assert t["config_hash"] == hashes[method]
        assert t["arch"] == "resnet20" and t["method"] == method
        assert re.fullmatch(r"[0-9a-f]{40}|unknown", t["git_commit"])
        assert t["torch_version"] == torch.__version__
        assert t["device"].startswith("cpu")
        assert t["precision"] == "fp32"
        assert run.info.run_name == next(c.name for c in grid.runs if c.method == method)
    csg = by_method["csg"].data.params
    assert csg["slice"] == "16" and csg["code_dim"] == "72" and csg["layout"] == "contiguous"
    assert csg["generator"] == "learned"


@pytest.mark.slow
def test_per_epoch_and_final_metrics(runs):
    client, _, by_method = runs
    for method, run in by_method.items():
        rid = run.info.run_id
        history = {}
        for key in ("val_acc", "test_acc", "train_loss", "lr"):
            points = sorted(client.get_metric_history(rid, key), key=lambda m: m.step)
            assert [m.step for m in points] == list(range(1, EPOCHS + 1)), (method, key)
            for m in points:
                history.setdefault(m.step, {"epoch": m.step, "epoch_seconds": 0.0})[key] = m.value
        m = run.data.metrics
        for key in ("test_acc_at_best_val", "final_test_acc", "best_test_acc", "best_val_acc", "params_total",
                    "params_trainable", "params_stored", "bytes_on_disk", "flops", "kernel_gen_flops"):
            assert key in m, (method, key)
        assert m["params_total"] == EXPECTED_TOTAL[method]
        assert m["params_stored"] == EXPECTED_TOTAL[method]
        assert (m["kernel_gen_flops"] > 0) == (method == "csg")
        # the final figures are the ones the logged history implies
        s = summarize([history[k] for k in sorted(history)])
        assert m["test_acc_at_best_val"] == pytest.approx(s["test_acc_at_best_val"])
        assert m["final_test_acc"] == pytest.approx(history[EPOCHS]["test_acc"])
        assert m["best_test_acc"] == pytest.approx(max(h["test_acc"] for h in history.values()))
        assert 0 <= m["test_acc_at_best_val"] <= 100


@pytest.mark.slow
def test_model_artifact_loads_into_a_fresh_model(runs, tmp_path):
    client, _, by_method = runs
    for method, run in by_method.items():
        names = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
        assert names == {"model/model.pt", "model/config.json"}
        local = client.download_artifacts(run.info.run_id, "model", str(tmp_path / method))
        config = json.loads((tmp_path / method / "model" / "config.json").read_text())
        assert config["arch"] == "resnet20" and config["method"] == method and config["epochs"] == EPOCHS
        state = torch.load(f"{local}/model.pt", map_location="cpu", weights_only=True)
        model, _ = build(config["arch"], config["method"], config["resolved_args"], seed=config["seed"])
        model.load_state_dict(state, strict=True)
        if method == "csg":
            assert "csg.weight" in state and state["csg.weight"].shape == (16 * 16 * 9, 72)


@pytest.mark.slow
def test_rerun_skips_finished_runs(grid_run, runs, cli):
    client, exp, by_method = runs
    before = {r.info.run_id for r in client.search_runs([exp.experiment_id])}
    again = cli(*grid_run["argv"])
    assert again.returncode == 0, again.stderr
    after = client.search_runs([exp.experiment_id])
    assert {r.info.run_id for r in after} == before  # no new MLflow run
    assert all(r.info.status == "FINISHED" for r in after)
    lines = [line for line in again.stdout.splitlines() if line.startswith("resnet20-")]
    assert len(lines) == 2 and all("skipped" in line for line in lines), again.stdout
    # and nothing was logged twice
    for run in after:
        assert len(client.get_metric_history(run.info.run_id, "val_acc")) == EPOCHS
    status = cli("status", grid_run["path"], "--tracking-uri", grid_run["uri"], "--output", grid_run["tmp"] / "out")
    assert status.returncode == 0 and status.stdout.count("done") == 2, status.stdout


def test_ctrl_c_during_a_store_write_lands_after_the_write(tmp_path):
    """SIGINT arriving mid-write must neither cut the write nor leave a lock for the next client."""
    import os
    import signal
    import time

    from study.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri)
    run_id = tracker.create(tracker.experiment("interrupts"), "r", {})
    write = tracker.client.log_batch

    def write_while_interrupted(*a, **kw):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)  # the signal is handled here, in the middle of the call
        return write(*a, **kw)

    tracker.client.log_batch = write_while_interrupted
    with pytest.raises(KeyboardInterrupt):
        tracker.log(run_id, tags={"first": "1"})
    fresh = Tracker(uri)  # same process: MLflow hands it the same cached engine
    fresh.log(run_id, tags={"second": "2"})
    tags = fresh.client.get_run(run_id).data.tags
    assert tags["first"] == "1" and tags["second"] == "2"


def test_a_missing_run_is_not_mistaken_for_a_gateway_error(tmp_path):
    """Run ids are hex: one holding "502" must not read as HTTP 502 and be retried for minutes."""
    import time

    from study.tracking import Tracker

    client = Tracker(f"sqlite:///{tmp_path}/mlflow.db").client
    started = time.monotonic()
    with pytest.raises(Exception, match="not found"):
        client.get_run("5021e5f100e44294b8ed2d0327b2b27c")
    assert time.monotonic() - started < 30
