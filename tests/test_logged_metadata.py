"""The runner logs what the analysis needs (the parameter breakdown as metrics, the labels as tags) at
run start; `study backfill-metadata` adds the same to older runs and manifests; the analysis reads
them from the store with the model-building code out of reach, importing only `study.schema`."""
from __future__ import annotations

import ast
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from grid_subprocess import run_grid, runs, study, uri, write_grid
from study import schema

SMALL = {"epochs": 2, "train_subset": 256, "val_size": 128, "test_subset": 128}
BLOCKS = [{"name": "plain", "method": "none"},
          {"name": "csg8", "method": "csg", "method_args": {"slice": 16, "code_dim": 8}},
          {"name": "csg8-bin", "method": "csg", "method_args": {"slice": 16, "code_dim": 8, "generator": "binary"}},
          {"name": "fprune", "method": "filterprune", "method_args": {"ratio": 0.3, "prune_at": 0.5}}]

# imports blocked while the analysis runs: the training code and torch (study.schema stays reachable)
BLOCKER = """
import sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        top = name.split('.')[0]
        if top in ('torch', 'torchvision', 'baselines') or (name.startswith('study.') and name != 'study.schema'):
            raise ImportError(f'{name} is blocked: the analysis must read the store only')
        return None
sys.meta_path.insert(0, Blocked())
from analysis.__main__ import main
rc = main(sys.argv[1:])
assert not [m for m in sys.modules if m == 'torch' or (m.startswith('study.') and m != 'study.schema')]
sys.exit(rc)
"""


def analysis_blocked(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, data_root):
    folder = tmp_path_factory.mktemp("metadata")
    grid = write_grid(folder, "meta", BLOCKS, **SMALL)
    proc = run_grid(grid, folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder


def by_name(store: Path) -> dict:
    client, found = runs(uri(store), "meta")
    return client, {r.info.run_name: r for r in found}


def test_the_runner_logs_the_breakdown_at_start_and_it_equals_the_accounting(tiny):
    import torch

    from study import accounting
    from study.methods import build, get_method

    client, found = by_name(tiny)
    assert set(found) == {b["name"] for b in BLOCKS}
    for block in BLOCKS:
        run = found[block["name"]]
        m = run.data.metrics
        # the network the run ends with, counted by role by the accounting module
        torch.manual_seed(0)
        model, margs = build("resnet20", block["method"], block.get("method_args", {}))
        model = get_method(block["method"]).final_model(model, margs, SMALL["epochs"])
        counts = accounting.breakdown(model)
        assert {c: m[schema.BREAKDOWN[c]] for c in schema.CATEGORIES} == counts
        assert m[schema.BREAKDOWN_TOTAL] == sum(counts.values()) == m["params_total"]  # what training ended with
        assert m[schema.BREAKDOWN_TOTAL] - m[schema.BREAKDOWN["generator (frozen, not stored)"]] == m["params_stored"]
        # logged once, at step 0, before the first epoch's metrics
        (first,) = client.get_metric_history(run.info.run_id, schema.BREAKDOWN_TOTAL)
        epoch1 = min(h.timestamp for h in client.get_metric_history(run.info.run_id, "val_acc"))
        assert first.step == 0 and first.timestamp <= epoch1
    csg, binary, fprune = found["csg8"].data.metrics, found["csg8-bin"].data.metrics, found["fprune"].data.metrics
    assert csg[schema.BREAKDOWN["generator"]] == 16 * 9 * 16 * 8 and csg[schema.BREAKDOWN["codes"]] > 0
    assert binary[schema.BREAKDOWN["generator (frozen, not stored)"]] == 16 * 9 * 16 * 8
    assert fprune[schema.BREAKDOWN_TOTAL] < found["plain"].data.metrics[schema.BREAKDOWN_TOTAL]  # pruned at the end


def test_the_runner_tags_the_labels(tiny):
    from study.config import RunConfig

    _, found = by_name(tiny)
    tags = {name: r.data.tags for name, r in found.items()}
    assert tags["plain"][schema.METHOD_LABEL_TAG] == "plain" and tags["plain"][schema.VARIANT_TAG] == "-"
    assert tags["csg8"][schema.VARIANT_TAG] == "S16 d8" and tags["csg8-bin"][schema.VARIANT_TAG] == "S16 d8 binary"
    assert tags["fprune"][schema.METHOD_LABEL_TAG] == "filter pruning"
    assert tags["fprune"][schema.VARIANT_NAME_TAG] == "pruned at 0.5 of training, fine-tuned"
    assert tags["csg8"][schema.VARIANT_NAME_TAG] == ""
    for t in tags.values():
        assert json.loads(t[schema.CONFIG_KEYS_TAG]) == [k for k in RunConfig.keys() if k != "method_args"]


def test_the_report_reads_the_store_with_the_model_code_unimportable(tiny, tmp_path):
    out = tmp_path / "report"
    proc = analysis_blocked("report", "--tracking-uri", uri(tiny), "--experiment", "meta", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, found = by_name(tiny)
    with open(out / "tables" / "param_breakdown.csv", newline="") as f:
        table = {(r["method"], r["variant"]): r for r in csv.DictReader(f)}
    assert len(table) == len(BLOCKS)
    for r in found.values():
        row = table[(r.data.params["method"], r.data.tags[schema.VARIANT_TAG])]
        for c in schema.CATEGORIES:
            assert int(row[c]) == r.data.metrics[schema.BREAKDOWN[c]]
        assert int(row["total"]) == int(float(row["logged_total"])) == r.data.metrics["params_total"]
    report = (out / "REPORT.md").read_text()
    assert "Parameter breakdown: configurations whose runs logged none" not in report
    assert "could not be rebuilt" not in report and "logged no parameter breakdown" not in report
    with open(out / "manifest.csv", newline="") as f:
        manifest = list(csv.DictReader(f))
    assert all(set(schema.MANIFEST_EXTRA) <= set(r) for r in manifest)
    assert {r["variant_name"] for r in manifest} == {"", "pruned at 0.5 of training, fine-tuned"}


def test_backfill_makes_an_old_style_run_readable(tiny, tmp_path):
    """A run logged before the breakdown and the labels existed (its params only) is refused by the
    analysis with the command that fixes it; after `backfill-metadata` it reads like a new one."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    _, found = by_name(tiny)
    old_uri = f"sqlite:///{tmp_path / 'old.db'}"
    client = MlflowClient(old_uri)
    exp = client.create_experiment("old", artifact_location=(tmp_path / "art").as_uri())
    for name in ("csg8-bin", "fprune"):
        src = found[name]
        run = client.create_run(exp, run_name=name, tags={k: v for k, v in src.data.tags.items()
                                                          if k not in schema.LABEL_TAGS})
        keep = {k: v for k, v in src.data.metrics.items() if k not in schema.BREAKDOWN_METRICS}
        client.log_batch(run.info.run_id, metrics=[Metric(k, v, 0, SMALL["epochs"]) for k, v in keep.items()],
                         params=[Param(k, v) for k, v in src.data.params.items()])
        client.set_terminated(run.info.run_id, "FINISHED")
    refused = analysis_blocked("report", "--tracking-uri", old_uri, "--out", str(tmp_path / "no"))
    assert refused.returncode == 2 and f"python -m study backfill-metadata --tracking-uri {old_uri}" in refused.stderr

    done = study("backfill-metadata", "--tracking-uri", old_uri)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 run(s) given the breakdown and labels (0 without a breakdown), 0 already had them" in done.stdout
    again = study("backfill-metadata", "--tracking-uri", old_uri)
    assert "0 run(s) given" in again.stdout and "2 already had them" in again.stdout
    for r in client.search_runs([exp]):
        src = found[r.info.run_name]
        for key in schema.BREAKDOWN_METRICS:
            assert r.data.metrics[key] == src.data.metrics[key]
        for key in schema.LABEL_TAGS:
            assert r.data.tags[key] == src.data.tags[key]
    proc = analysis_blocked("report", "--tracking-uri", old_uri, "--out", str(tmp_path / "yes"))
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_backfill_fills_a_manifest_as_the_committed_one_carries_it(tmp_path):
    """The committed quick manifest was filled by `backfill-metadata --manifest`: stripping the filled
    columns from a few of its rows and filling them again gives the same bytes (list arguments and the
    structure a run ends with included)."""
    text = (REPO / "results" / "quick" / "manifest.csv").read_text()
    rows = list(csv.reader(io.StringIO(text)))
    header, body = rows[0], rows[1:]
    col = {c: i for i, c in enumerate(header)}
    pick = [r for r in body if r[col["run_name"]] in ("resnet20-plain-s0", "resnet20-csg16x72-binary-s0",
                                                      "resnet20-softshare-matched-s0", "resnet20-filterprune-matched-s1",
                                                      "resnet20-prune-matched-s0")]
    assert len(pick) == 5

    def write(path, cols, data):
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerows([[c for c in cols], *data])
        path.write_text(buf.getvalue())
    n = len(header) - len(schema.MANIFEST_EXTRA)
    assert header[n:] == schema.MANIFEST_EXTRA
    write(tmp_path / "manifest.csv", header[:n], [r[:n] for r in pick])
    write(tmp_path / "expected.csv", header, pick)
    proc = study("backfill-metadata", "--manifest", str(tmp_path / "manifest.csv"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "manifest.csv").read_text() == (tmp_path / "expected.csv").read_text()
    bad = study("backfill-metadata", "--manifest", str(tmp_path / "missing.csv"))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_analysis_imports_nothing_of_study_but_the_schema_and_the_schema_only_the_standard_library():
    for path in sorted((REPO / "analysis").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                if name == "study" and isinstance(node, ast.ImportFrom):
                    assert [a.name for a in node.names] == ["schema"], f"{path.name}: from study import ..."
                else:
                    assert not name.startswith("study.") or name == "study.schema", f"{path.name} imports {name}"
                assert not name.startswith("baselines"), f"{path.name} imports {name}"
    code = "import sys, study.schema; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'mlflow', 'numpy', 'pandas', 'yaml')))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr


def test_the_labels_read_back(tmp_path):
    assert schema.method_label("none") == "plain" and schema.METHOD_ORDER[0] == schema.PLAIN == "none"
    for method, args, target in [("csg", {"slice": 16, "code_dim": 72, "generator": "binary", "layout": "block",
                                          "policy": "all"}, None),
                                 ("softshare", {"layers": "authors", "templates": "[2, 4, 3]"}, 176698),
                                 ("prune", {"sparsity": "0.34806"}, 176698)]:
        label = schema.variant_label(method, {k: schema.parse_value(v) for k, v in args.items()}, target)
        back = schema.args_from_variant(method, label)
        assert back.pop("target_params", None) == (None if target is None else str(target))
        assert schema.variant_label(method, {k: schema.parse_value(v) for k, v in back.items()}, target) == label
    assert schema.variant_label("csg", dict(schema.CSG_DEFAULTS)) == "S16 d72"


def test_backfill_counts_list_arguments_and_the_structure_a_run_ends_with():
    """softshare logs its per-stage templates as '[2, 4, 3]'; filter pruning reshapes the network part-way.
    Both come back with the parameter count the run logged (the quick study's figures)."""
    from study.metadata import from_logged_params

    base = {"arch": "resnet20", "seed": "0", "epochs": "10", "target_params": "None", "budget_count": "total"}
    for method, args, total in [("softshare", {"layers": "authors", "templates": "[2, 4, 3]"}, 177_609),
                                ("filterprune", {"layers": "authors", "prune_at": "0.5", "ratio": "0.35"}, 176_318)]:
        metrics, tags = from_logged_params({**base, "method": method, **args}, logged_total=float(total))
        assert metrics[schema.BREAKDOWN_TOTAL] == total
        assert tags[schema.METHOD_LABEL_TAG] == schema.method_label(method)
