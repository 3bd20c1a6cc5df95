"""Generator reuse: a run trains with another run's frozen generator (`generator: reuse`).

The reused weight is bitwise the source's final generator, gets no gradient and no weight decay; a
missing or mismatched source is refused before training; the runner runs sources first, skips
dependants of a failed source, and a grid killed between its stages resumes to the metrics of an
uninterrupted one.
"""
from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from grid_subprocess import DATA_ROOT, REPO, TINY, popen_grid, run_grid, runs, study, uri
from study import grid as grid_mod
from study import runner
from study.accounting import count_parameters
from study.cli import main
from study.config import RunConfig
from study.methods import get_method
from study.models import get_arch
from study.train import make_optimizer, train

SMALL = {**TINY, "epochs": 1, "train_subset": 256, "val_size": 128, "test_subset": 128}
SOURCE = {"name": "src", "arch": "resnet20", "method": "csg", "method_args": {"slice": 16, "code_dim": 8}}


def reuse(name="reuse", source="src", arch="resnet32", **args) -> dict:
    return {"name": name, "arch": arch, "method": "csg",
            "method_args": {"slice": 16, "code_dim": 8, "generator": "reuse", "generator_from": source, **args}}


def write(folder: Path, name: str, runs_: list[dict], **defaults) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "defaults": {**SMALL, **defaults}, "runs": runs_}))
    return path


# -- the generator itself --------------------------------------------------------------------------
def test_reused_generator_is_frozen_stored_and_loaded_bitwise():
    csg, arch = get_method("csg"), get_arch("resnet32")
    args = csg.args({"slice": 16, "code_dim": 8, "generator": "reuse"})
    weight = torch.randn(16 * 16 * 9, 8, dtype=torch.float32)
    model = csg.build(arch, {**args, "generator_weight": weight})
    assert torch.equal(model.csg.weight, weight) and not model.csg.weight.requires_grad
    counts = count_parameters(model)
    assert counts["frozen"] == weight.numel()  # frozen ...
    assert counts["stored"] == counts["total"]  # ... and stored: no seed regenerates another run's weight
    state = model.state_dict()
    assert torch.equal(state["csg.weight"], weight)  # checkpoints carry it
    with pytest.raises(ValueError, match="needs"):
        csg.build(arch, {**args, "generator_weight": torch.zeros(16 * 16 * 9, 16)})
    with pytest.raises(ValueError, match="only applies to generator: reuse"):
        csg.args({"generator_from": "src"})


def test_reused_generator_gets_no_gradient_and_no_weight_decay(data_root):
    torch.set_num_threads(1)
    cfg = RunConfig(**{**SMALL, "arch": "resnet20", "method": "csg", "weight_decay": 5e-3,
                       "method_args": {"slice": 16, "code_dim": 8, "generator": "reuse"}})
    args = get_method("csg").args(dict(cfg.method_args))
    weight = torch.randn(16 * 16 * 9, 8)
    torch.manual_seed(cfg.seed)  # as `train` does before it builds: the same initial codes
    before = get_method("csg").build(get_arch("resnet20"), {**args, "generator_weight": weight})
    result = train(cfg, data_root, resolved_args={**args, "generator_weight": weight.clone()})
    gen = result.model.csg.weight
    assert torch.equal(gen.detach().cpu(), weight)  # bitwise, after a whole epoch of SGD with decay
    assert gen.grad is None and not gen.requires_grad
    opt, _ = make_optimizer(result.model, cfg, 1, 0)
    assert all(p is not gen for group in opt.param_groups for p in group["params"])  # nothing to decay
    codes = [m.code for m in result.model.modules() if hasattr(m, "code")]
    assert not all(torch.equal(c, b.code) for c, b in
                   zip(codes, [m for m in before.modules() if hasattr(m, "code")]))  # the codes did train


# -- the grid ---------------------------------------------------------------------------------------
@pytest.fixture
def cli(capsys):
    def call(*args: str):
        code = main(list(args))
        return code, capsys.readouterr()
    return call


REFUSED = {
    "missing source": ([SOURCE, reuse(source="nowhere")], "names no run of this grid"),
    "no source named": ([SOURCE, {**reuse(), "method_args": {"generator": "reuse", "code_dim": 8}}],
                        "needs generator_from"),
    "code dim mismatch": ([SOURCE, reuse(code_dim=16)], "slice/code_dim/kernel 16/8/3, this run needs 16/16/3"),
    "slice mismatch": ([SOURCE, reuse(slice=8)], "must match"),
    "kernel mismatch": ([SOURCE, reuse(arch="shufflenetv2_0_5")], "16/8/3, this run needs 16/8/1"),
    "binary source": ([{**SOURCE, "method_args": {"slice": 16, "code_dim": 8, "generator": "binary"}}, reuse()],
                      "random-binary"),
    "plain source": ([{"name": "src", "method": "none"}, reuse()], "trains no generator"),
    "itself": ([reuse(name="loop", source="loop")], "the run itself"),
    "cycle": ([reuse(name="a", source="b"), reuse(name="b", source="a")], "cycle"),
    "ambiguous": ([SOURCE, {**SOURCE, "seed": 1}, reuse()], "is the name of 2 runs"),
    "hash given by hand": ([SOURCE, reuse(generator_from_hash="0123456789abcdef")], "set by the grid"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_missing_or_mismatched_source_is_refused_before_training(tmp_path, cli, case):
    runs_, needle = REFUSED[case]
    path = write(tmp_path, "bad", runs_)
    code, out = cli("run", str(path), "--tracking-uri", uri(tmp_path), "--output", str(tmp_path / "out"),
                    "--data-root", DATA_ROOT)
    lines = out.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in out.err, out.err
    assert needle in lines[0], lines[0]
    assert not (tmp_path / "out" / "checkpoints").exists() and not (tmp_path / "mlflow.db").exists()


def test_sources_come_first_and_the_source_hash_keys_the_dependant(tmp_path):
    path = write(tmp_path, "order", [reuse(), {"name": "plain", "method": "none"}, SOURCE])
    g = grid_mod.load(path)
    assert [c.name for c in g.runs] == ["plain", "src", "reuse"]  # file order, except sources first
    src, dep = g.runs[1], g.runs[2]
    assert dep.method_args["generator_from_hash"] == src.hash() and g.depends == {dep.hash(): src.hash()}
    assert g.source_of(dep) is src and g.source_of(src) is None
    assert g.counts[dep.hash()]["frozen"] == 16 * 16 * 9 * 8  # counted as frozen, and stored
    assert g.counts[dep.hash()]["stored"] == g.counts[dep.hash()]["total"]
    other = write(tmp_path, "other", [{**SOURCE, "epochs": 2}, reuse()])
    assert grid_mod.load(other).runs[1].hash() != dep.hash()  # another source, another run


def test_the_quick_studys_plain_and_csg_runs_keep_their_keys():
    """Reuse adds no CSG default: the committed quick study's plain and CSG runs are still runs of
    configs/quick.yaml under the same hashes."""
    manifest = REPO / "results" / "quick" / "manifest.csv"
    stored = {r["config_hash"] for r in csv.DictReader(io.StringIO(manifest.read_text()))
              if r["experiment"] == "quick" and r["superseded"] == "False" and r["method"] in ("none", "csg")}
    assert stored and stored <= {c.hash() for c in grid_mod.load(REPO / "configs" / "quick.yaml").runs}


def test_waves_run_independent_jobs_together_and_dependants_after(tmp_path, monkeypatch):
    path = write(tmp_path, "waves", [SOURCE, {"name": "plain", "method": "none"}, reuse(),
                                     reuse(name="chained", source="reuse"), {**SOURCE, "name": "src2", "seed": 1}])
    g = grid_mod.load(path)
    jobs = runner.jobs_for(g, uri(tmp_path), DATA_ROOT, tmp_path / "out", 2)
    names = [[jobs[i].cfg.name for i in wave] for wave in runner.waves(jobs)]
    assert names == [["src", "plain", "src2"], ["reuse"], ["chained"]]

    ran = []

    def fake(job):
        ran.append(job.cfg.name)
        return runner.Outcome(job.cfg.name, runner.FAILED if job.cfg.name == "src" else runner.DONE, "boom")
    monkeypatch.setattr(runner, "run_one", fake)
    outcomes = runner.execute(jobs, 1)
    assert ran == ["src", "plain", "src2"]  # the dependants of the failed source never start
    assert [o.name for o in outcomes] == [j.cfg.name for j in jobs]
    by_name = {o.name: o for o in outcomes}
    assert by_name["reuse"].status == "skipped" and "source src FAILED" in by_name["reuse"].reason
    assert by_name["chained"].status == "skipped" and "source reuse skipped" in by_name["chained"].reason


# -- whole grids through the CLI ------------------------------------------------------------------
def _generator(client, run, folder: Path) -> torch.Tensor:
    folder.mkdir()
    local = client.download_artifacts(run.info.run_id, "model/model.pt", str(folder))
    return torch.load(local, weights_only=True)["csg.weight"]


FINAL = ("final_test_acc", "test_acc_at_best_val", "best_val_acc", "params_total", "params_frozen")


@pytest.mark.slow
def test_two_stage_grid_killed_between_stages_resumes_to_the_uninterrupted_result(tmp_path, data_root):
    path = write(tmp_path, "stages", [{**reuse(), "epochs": 2}, SOURCE])  # the dependant first in the file
    dry = study("run", str(path), "--tracking-uri", uri(tmp_path / "dry"), "--output", str(tmp_path / "dry"),
                "--dry-run")
    listed = [line.split() for line in dry.stdout.splitlines()[1:]]
    assert dry.returncode == 0 and [row[0] for row in listed] == ["src", "reuse"], dry.stdout  # dependency order
    assert "(after src)" in dry.stdout

    reference = tmp_path / "reference"
    done = run_grid(path, reference)
    assert done.returncode == 0, done.stderr

    store = tmp_path / "killed"
    folder = store / "out" / "checkpoints" / next(c.hash() for c in grid_mod.load(path).runs if c.name == "src")
    proc = popen_grid(path, store, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, seen = time.time() + 600, False
    while time.time() < deadline and proc.poll() is None:
        held = list(folder.glob("epoch*.pt"))
        if seen and not held:  # the source is FINISHED (its checkpoints go once it is in the store)
            break
        seen = seen or bool(held)
        time.sleep(0.02)
    assert proc.poll() is None, "the grid finished before it could be killed between its stages"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _, found = runs(uri(store), "stages")
    assert {r.info.run_name: r.info.status for r in found}.get("reuse") in (None, "RUNNING")  # stage 2 unfinished

    again = run_grid(path, store)
    assert again.returncode == 0, again.stderr
    assert "already FINISHED" in again.stdout  # the source is not trained twice

    client, final = runs(uri(store), "stages")
    by_name = {r.info.run_name: r for r in final}
    assert sorted(by_name) == ["reuse", "src"] and len(final) == 2
    assert all(r.info.status == "FINISHED" for r in final)
    src, dep = by_name["src"], by_name["reuse"]
    assert torch.equal(_generator(client, dep, tmp_path / "a"), _generator(client, src, tmp_path / "b"))  # bitwise the source's generator
    assert dep.data.tags["generator_from_run_id"] == src.info.run_id  # lineage
    assert dep.data.params["generator_from_hash"] == src.data.tags["config_hash"]
    assert dep.data.metrics["params_frozen"] == 16 * 16 * 9 * 8
    assert 0 < dep.data.metrics["generator_share"] < 1 and "generator_share" in src.data.metrics
    assert sorted(m.step for m in client.get_metric_history(dep.info.run_id, "val_acc")) == [1, 2]
    _, ref = runs(uri(reference), "stages")
    metrics = lambda rs: {r.info.run_name: {k: r.data.metrics[k] for k in FINAL} for r in rs}  # noqa: E731
    assert metrics(final) == metrics(ref)  # bitwise at one thread


@pytest.mark.slow
def test_a_reuse_pair_over_two_seeds_is_one_configuration_beside_its_learned_twin(tmp_path, data_root):
    """Seed s reuses the generator of source seed s, so the dependants name two source runs and two source
    hashes; they are still one configuration of two seeds, labelled without either, and the report
    compares it with the same network's own learned generator in a section of its own."""
    from analysis import load
    from analysis.__main__ import main as analysis_main

    grid = tmp_path / "pair.yaml"
    grid.write_text(yaml.safe_dump({"name": "pair", "defaults": SMALL, "grid": [
        {"arch": "resnet20", "method": "csg", "method_args": {"slice": 16, "code_dim": 8}, "seed": [0, 1]},
        {"arch": "resnet32", "method": "csg", "method_args": {"slice": 16, "code_dim": 8}, "seed": [0, 1]}],
        "runs": [{**reuse(name=f"reuse-s{s}", source=f"resnet20-csg16x8-s{s}"), "seed": s} for s in (0, 1)]}))
    done = run_grid(grid, tmp_path)
    assert done.returncode == 0, done.stderr

    fin = load.load(uri(tmp_path), "pair").finished
    dependants = fin[fin["run_name"].str.startswith("reuse-")]
    assert len(dependants) == 2 and dependants["group"].nunique() == 1
    assert set(dependants["variant"]) == {"S16 d8 reuse generator_from=resnet20-csg16x8"}
    assert fin["group"].nunique() == 3  # the sources, ResNet-32's learned twin, the dependants

    assert analysis_main(["report", "--tracking-uri", uri(tmp_path), "--experiment", "pair",
                          "--out", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "REPORT.md").read_text()
    section = text[text.index("**Generator reuse.**"):text.index("**How firm this is.**")]
    trained, total = int(dependants["params_trainable"].iloc[0]), int(dependants["params_total"].iloc[0])
    frozen = 16 * 16 * 9 * 8  # the generator: slice 16 x 16, 3 x 3 kernels, code dimension 8
    assert trained == total - frozen  # all but the frozen generator
    assert (f"CSG S16 d8 reuse generator_from=resnet20-csg16x8 (resnet32; trains {trained:,} of {total:,} "
            f"parameters; its frozen generator, {frozen:,} parameters, is {100 * frozen / total:.1f}% of the "
            f"network)") in section
    assert "for S16 d8 (trains" in section and "reuse − learned = " in section and "(Bonferroni over 1;" in section


@pytest.mark.slow
def test_dependants_of_a_failed_source_are_skipped_and_say_why(tmp_path, data_root):
    path = write(tmp_path, "failing", [{**SOURCE, "lr": 1.0e8}, reuse(arch="resnet20")])
    done = run_grid(path, tmp_path)
    assert done.returncode == 1, done.stderr
    line = next(l for l in done.stdout.splitlines() if l.startswith("reuse"))
    assert "skipped" in line and "source src FAILED" in line and "DivergedError" in line
    _, found = runs(uri(tmp_path), "failing")
    assert [r.info.run_name for r in found] == ["src"]  # the dependant never started
    status = study("status", str(path), "--tracking-uri", uri(tmp_path), "--output", str(tmp_path / "out"))
    assert "blocked: source src FAILED" in status.stdout
