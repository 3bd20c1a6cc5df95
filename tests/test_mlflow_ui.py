"""`python -m analysis ui` serves the runs: start it on a synthetic store, open it in a real browser.

Needs Debian's chromium (`apt-get install -y chromium`) and the `playwright` package; Playwright's own
browser download is not used.  Under CI=true a missing browser fails the test; elsewhere it skips.
Screenshots are copied to tests/artifacts/ for a person to look at.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")  # Debian's package
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RUNS = ["resnet20-none-s0", "resnet20-csg-16x72-s0", "resnet20-csg-16x72-s1"]
METRIC = "test_acc_at_best_val"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _need(ok: bool, why: str) -> None:
    if ok:
        return
    if _in_ci():
        pytest.fail(f"{why} (required under CI=true)")
    pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def _make_store(root: Path) -> tuple[str, str, dict[str, str]]:
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("ui-test", artifact_location=(root / "mlartifacts").as_uri())
    ids = {}
    for i, name in enumerate(RUNS):
        run = client.create_run(exp, run_name=name, tags={"arch": "resnet20", "method": name.split("-")[1]})
        metrics = [Metric("val_acc", 80.0 + i + e, 1000 * e, e) for e in (1, 2, 3)]
        metrics += [Metric(METRIC, 90.0 + i / 10, 5000, 0)]
        client.log_batch(run.info.run_id, metrics=metrics,
                         params=[Param("arch", "resnet20"), Param("seed", name[-1])])
        client.set_terminated(run.info.run_id, "FINISHED")
        ids[name] = run.info.run_id
    return uri, exp, ids


def test_ui_command_binds_to_loopback():
    from analysis.__main__ import ui_command
    cmd = ui_command("sqlite:////tmp/x.db", 5123)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "5123"


def test_mlflow_ui_shows_runs_in_a_browser(tmp_path):
    _need(Path(CHROMIUM).exists(), f"chromium not found at {CHROMIUM} (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need(False, "the playwright package is not installed")

    uri, exp_id, run_ids = _make_store(tmp_path)
    port = _free_port()
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

        shots = []
        with sync_playwright() as p:
            browser = p.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                viewport={"width": 1600, "height": 1000})
            page = None
            try:
                # the runs table of the experiment (a fresh page per URL: hash routes do not reload)
                page = browser.new_page()
                page.goto(f"{base}/#/experiments/{exp_id}/runs", wait_until="domcontentloaded", timeout=60_000)
                for name in RUNS:
                    page.get_by_text(name, exact=True).first.wait_for(timeout=60_000)
                body = page.inner_text("body")
                assert all(name in body for name in RUNS)
                shots.append(tmp_path / "mlflow_ui_experiment.png")
                page.screenshot(path=str(shots[-1]))

                # one run's page lists its metrics by name
                page = browser.new_page()
                page.goto(f"{base}/#/experiments/{exp_id}/runs/{run_ids[RUNS[1]]}", wait_until="domcontentloaded",
                          timeout=60_000)
                page.get_by_text(METRIC, exact=True).first.wait_for(timeout=60_000)
                body = page.inner_text("body")
                assert METRIC in body and "val_acc" in body and RUNS[1] in body
                shots.append(tmp_path / "mlflow_ui_run.png")
                page.screenshot(path=str(shots[-1]), full_page=True)
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
        for shot in shots:
            assert shot.stat().st_size > 10_000
            shutil.copy(shot, ARTIFACTS / shot.name)
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
