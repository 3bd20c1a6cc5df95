"""`python -m analysis ui` serves a store written by the harness: a real browser sees what a researcher uses.

A tiny real grid (plain ResNet-20 and CSG 16/72, 3 epochs on a few hundred real CIFAR-10 images) is
trained with `python -m study run` into a fresh SQLite store.  Then, without a browser: the experiment is
marked as model training and carries the run-table view, each run has its three dataset inputs with md5
digests and split sizes, and its final network (and, for CSG, the materialised one) loads with
`mlflow.pytorch.load_model`.  With Debian's chromium through Playwright (`executable_path`, no browser
download): the run table with the headline accuracy, method, code dimension and parameter counts as
columns, the chart (compare) view of the two runs with their validation curves, and one run's page with
its logged models and datasets.  Under CI=true a missing browser fails the test; elsewhere it skips.
Screenshots go to tests/artifacts/, and also to $STUDY_UI_SHOTS when set (`results/ui/` holds the
committed ones).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import REPO, free_port, need

ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")  # Debian's package
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RUNS = ["resnet20-plain-s0", "resnet20-csg16x72-s0"]
METRIC = "test_acc_at_best_val"
TINY_GRID = {
    "name": "ui-test", "description": "Two tiny real runs for the browser test.",
    "defaults": {"arch": "resnet20", "epochs": 3, "batch_size": 64, "lr": 0.1, "schedule": "onecycle",
                 "warmup_epochs": 1, "train_subset": 384, "val_size": 128, "test_subset": 128},
    "grid": [{"method": "none"}, {"method": "csg", "method_args": {"slice": 16, "code_dim": 72}}],
}


def _listening_addresses(port: int) -> list[str]:
    """Local addresses listening on `port`, from /proc/net/tcp{,6} (state 0A = LISTEN)."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if state == "0A" and int(p, 16) == port:
                out.append(addr)
    return out


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.fixture(scope="module")
def harness_store(tmp_path_factory, data_root):
    """A store written by `python -m study run` from the tiny grid: (uri, experiment id, run ids by name)."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("ui-store")
    grid = root / "ui-test.yaml"
    grid.write_text(yaml.safe_dump(TINY_GRID))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    done = subprocess.run([sys.executable, "-m", "study", "run", str(grid), "--tracking-uri", uri, "--output",
                           str(root / "out"), "--threads", "1", "--data-root", str(data_root), "--progress", "plain"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr.count("epoch ") >= 2 * 3, done.stderr  # off a terminal: one line per finished epoch
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("ui-test")
    ids = {r.info.run_name: r.info.run_id for r in client.search_runs([exp.experiment_id])}
    assert sorted(ids) == sorted(RUNS)
    return uri, exp.experiment_id, ids


def test_the_harness_marks_the_experiment_and_logs_datasets_and_models(harness_store):
    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.tracking import MlflowClient

    from study.schema import EXPERIMENT_KIND_TAG, MODEL_TRAINING, VIEW_TAG

    uri, exp_id, ids = harness_store
    client = MlflowClient(uri)
    exp = client.get_experiment(exp_id)
    assert exp.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING  # MLflow 3's "model training" experiment type
    view = json.loads(exp.tags[VIEW_TAG])
    assert view["selectedColumns"][:3] == [f"metrics.`{METRIC}`", "params.`method`", "params.`code_dim`"]
    assert exp.tags["mlflow.note.content"].startswith("Two tiny real runs")
    for name, run_id in ids.items():
        run = client.get_run(run_id)
        inputs = {d.tags[0].value: d.dataset for d in run.inputs.dataset_inputs}
        assert sorted(inputs) == ["test", "training", "validation"]
        sizes = {k: json.loads(d.profile)["num_examples"] for k, d in inputs.items()}
        assert sizes == {"training": 384, "validation": 128, "test": 128}
        assert all(len(d.digest) == 32 and d.name == "cifar10" for d in inputs.values())  # md5 hex
        models = {client.get_logged_model(o.model_id).name: o.model_id for o in run.outputs.model_outputs}
        assert sorted(models) == (["materialized_network", "trained_network"] if "csg" in name else ["trained_network"])
        mlflow.set_tracking_uri(uri)
        nets = {k: mlflow.pytorch.load_model(f"models:/{v}").eval() for k, v in models.items()}
        x = torch.randn(4, 3, 32, 32)
        with torch.no_grad():
            out = nets["trained_network"](x)
            assert out.shape == (4, 10)
            if "materialized_network" in nets:  # ordinary convolutions, the same function
                assert torch.allclose(nets["materialized_network"](x), out, atol=1e-4)
                assert not any("csg" in k for k in nets["materialized_network"].state_dict())
        artifacts = Path(client.get_logged_model(models["trained_network"]).artifact_location.removeprefix("file://"))
        # the run's own model/ artifacts stay what generator reuse reads back
        assert {a.path for a in client.list_artifacts(run_id, "model")} == {"model/model.pt", "model/config.json"}
        assert sum(f.stat().st_size for f in artifacts.rglob("*") if f.is_file()) < 3_000_000  # small


def test_ui_command_binds_to_loopback():
    from analysis.__main__ import ui_command
    cmd = ui_command("sqlite:////tmp/x.db", 5123)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "5123"


def test_mlflow_ui_shows_the_study_in_a_browser(tmp_path, harness_store):
    need(Path(CHROMIUM).exists(), f"chromium not found at {CHROMIUM} (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need(False, "the playwright package is not installed")

    from study.schema import ui_path

    uri, exp_id, run_ids = harness_store
    port = free_port()
    log = open(tmp_path / "ui.log", "w")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "analysis", "ui", "--tracking-uri", uri, "--port", str(port)],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server_groups: list[int] = []
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            server_groups = sorted(set(server_groups) | set(_children(proc.pid)))
            if proc.poll() is not None:
                pytest.fail(f"the UI exited with {proc.returncode}:\n" + (tmp_path / "ui.log").read_text()[-3000:])
            try:
                with urllib.request.urlopen(base + "/", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("the UI did not answer HTTP 200 within 90 s:\n" + (tmp_path / "ui.log").read_text()[-3000:])
            time.sleep(0.5)
        server_groups = sorted(set(server_groups) | set(_children(proc.pid)))
        listening = _listening_addresses(port)
        assert listening and all(a == "0100007F" for a in listening), f"not bound to 127.0.0.1 only: {listening}"

        assert ui_path(exp_id) in (tmp_path / "ui.log").read_text()  # `analysis ui` prints the study's URL
        shots = []
        with sync_playwright() as p:
            browser = p.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                viewport={"width": 1600, "height": 900})
            page = None

            def open_page(route: str, ready: str, height: int = 900):
                # a fresh page per URL (hash routes do not reload); MLflow's assistant panel closed
                p = browser.new_page()
                p.set_viewport_size({"width": 1600, "height": height})
                p.goto(f"{base}/#{route}", wait_until="domcontentloaded", timeout=60_000)
                p.get_by_text(ready, exact=True).first.wait_for(timeout=60_000)
                try:
                    p.get_by_text("MLflow Assistant").first.wait_for(timeout=10_000)
                    p.get_by_role("button", name="Close").last.click()
                except Exception:  # noqa: BLE001  (no assistant in this MLflow build)
                    pass
                return p

            def shot(p, name: str) -> None:
                p.wait_for_timeout(1500)  # let charts and lazy cells draw
                shots.append(tmp_path / name)
                p.screenshot(path=str(shots[-1]))

            try:
                # 1. the run table, in the training view, with the study's columns and no set-up
                page = open_page(ui_path(exp_id), RUNS[0])
                # the Dataset and Models columns appear only once their lookups return, later than the
                # run rows on a loaded machine: wait for each before reading the header row
                for column in (METRIC, "Dataset", "Models"):
                    page.get_by_role("columnheader", name=column).first.wait_for(timeout=60_000)
                for cell in ("cifar10", "materialized_network"):
                    page.get_by_text(cell).first.wait_for(timeout=60_000)
                heads = {h.strip() for h in page.get_by_role("columnheader").all_inner_texts()}
                assert {METRIC, "method", "code_dim", "params_stored", "params_total"} <= heads, heads
                assert {"Dataset", "Models"} <= heads, heads
                body = page.inner_text("body")
                assert all(name in body for name in RUNS) and "Model training" in body
                assert "cifar10" in body and "materialized_network" in body  # the Dataset and Models cells
                shot(page, "runs_table.png")

                # 2. the compare (chart) view of the two runs: their validation-accuracy curves
                page = open_page(ui_path(exp_id) + "&compareRunsMode=CHART", RUNS[0])
                search = page.get_by_placeholder("Search metric charts")
                search.fill("val_acc")
                page.get_by_text("val_acc", exact=True).first.wait_for(timeout=60_000)
                page.wait_for_timeout(2000)
                assert page.locator("canvas, svg .plot-container, .js-plotly-plot").count() > 0
                legend = page.inner_text("body")
                assert all(name in legend for name in RUNS)
                shot(page, "compare_val_curves.png")

                # 3. one run's page: its logged models (final and materialised) and its datasets
                page = open_page(f"/experiments/{exp_id}/runs/{run_ids[RUNS[1]]}?workflowType=machine_learning",
                                 RUNS[1], height=1900)
                page.get_by_text("Logged models", exact=False).first.wait_for(timeout=60_000)
                body = page.inner_text("body")
                assert "Datasets" in body and "cifar10" in body and "Training" in body
                assert "materialized_network" in body and "trained_network" in body and METRIC in body
                shot(page, "run_page.png")
            except Exception:
                if page is not None:  # keep what the browser saw, for debugging
                    ARTIFACTS.mkdir(exist_ok=True)
                    page.screenshot(path=str(ARTIFACTS / "mlflow_ui_failure.png"), full_page=True)
                raise
            finally:
                browser.close()
        ARTIFACTS.mkdir(exist_ok=True)
        ignore = ARTIFACTS / ".gitignore"
        if not ignore.exists():
            ignore.write_text("*\n")  # screenshots are for looking at, not for committing
        keep = os.environ.get("STUDY_UI_SHOTS")  # e.g. results/ui: the committed screenshots
        for s in shots:
            assert s.stat().st_size > 10_000
            shutil.copy(s, ARTIFACTS / s.name)
            if keep:
                Path(keep).mkdir(parents=True, exist_ok=True)
                shutil.copy(s, Path(keep) / s.name)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # `analysis ui` stops the server's process group itself
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for pgid in server_groups:  # belt and braces: nothing of the server may outlive the test
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        log.close()
    assert proc.returncode == 128 + signal.SIGTERM
    assert not _listening_addresses(port), "the server still listens after the test"
