"""analysis/: statistics against hand computations, and the report end to end on a synthetic MLflow store."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from conftest import REPO
from analysis import figures, stats, tables
from analysis.figures import FIGURES, pareto_front
from analysis.load import parse_value, typed_column

TABLES = ["main_table", "method_comparison", "paper_vs_us", "configurations", "param_breakdown"]


# -- statistics, by hand ----------------------------------------------------------------------------
def test_describe_three_seeds_by_hand():
    d = stats.describe([90, 91, 93])
    mean = (90 + 91 + 93) / 3                                  # 91.3333
    std = math.sqrt(((90 - mean) ** 2 + (91 - mean) ** 2 + (93 - mean) ** 2) / 2)  # ddof=1: 1.527525
    half = 4.302653 * std / math.sqrt(3)                       # t_{0.975, 2} = 4.302653
    assert d["n"] == 3
    assert d["mean"] == pytest.approx(91.333333, abs=1e-6)
    assert d["std"] == pytest.approx(1.527525, abs=1e-6) == pytest.approx(std)
    assert d["ci_low"] == pytest.approx(mean - half, abs=1e-5)
    assert d["ci_high"] == pytest.approx(mean + half, abs=1e-5)
    assert d["ci_low"] == pytest.approx(87.5388, abs=1e-3) and d["ci_high"] == pytest.approx(95.1279, abs=1e-3)


def test_one_seed_has_no_interval():
    d = stats.describe([91.2, float("nan")])
    assert d["n"] == 1 and d["mean"] == 91.2
    assert math.isnan(d["std"]) and math.isnan(d["ci_low"]) and math.isnan(d["ci_high"])
    assert tables.fmt_acc(d["mean"], d["ci_low"], d["ci_high"], d["n"]) == "91.20 (1 seed, no interval)"
    assert tables.fmt_acc(91.0, 90.0, 92.0, 3) == "91.00 [90.00, 92.00]"


def test_params_parsed_into_types():
    assert [parse_value(v) for v in ("3", "0.05", "True", "None", "contiguous", "0.5,0.75")] == \
        [3, 0.05, True, None, "contiguous", "0.5,0.75"]
    assert str(typed_column(["16", None, "12"]).dtype) == "Int64"
    assert str(typed_column(["0.1", "1"]).dtype) == "float64"
    assert str(typed_column(["True", "False"]).dtype) == "boolean"
    assert list(typed_column(["176698", "resnet20-csg-16x72-s0"])) == ["176698", "resnet20-csg-16x72-s0"]


def test_pareto_front():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    y = np.array([80.0, 79.0, 85.0, 84.0])
    assert list(pareto_front(x, y)) == [0, 2]


# -- the report on a synthetic store ----------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from analysis.synthetic import make_store
    root = tmp_path_factory.mktemp("store")
    return make_store(root, experiment="quick")


@pytest.fixture(scope="module")
def report_dir(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "analysis", "report", "--tracking-uri", store, "--experiment", "quick",
                           "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def runs(store):
    from analysis.load import load
    return load(store, "quick")


def test_report_writes_every_file(report_dir):
    for name in FIGURES:
        for ext in ("png", "pdf"):
            p = report_dir / "figures" / f"{name}.{ext}"
            assert p.exists() and p.stat().st_size > 1000, p
    for name in TABLES:
        for ext in ("md", "tex", "csv"):
            assert (report_dir / "tables" / f"{name}.{ext}").exists(), (name, ext)
    text = (report_dir / "REPORT.md").read_text()
    for name in FIGURES:
        assert f"figures/{name}.png" in text
    for heading in ("How our protocol differs", "Grid configuration", "Compute, software and hardware",
                    "Runs left out"):
        assert heading in text
    assert "6 epoch(s)" in text                       # the protocol paragraph reads the epochs from the runs
    assert "mlflow" in text and "torch" in text
    assert "\\toprule" in (report_dir / "tables" / "main_table.tex").read_text()


def test_table_numbers_equal_the_frame(report_dir, runs):
    fin = runs.finished
    conf = pd.read_csv(report_dir / "tables" / "configurations.csv")
    assert len(conf) == fin["group"].nunique() == 9
    for group, g in fin.groupby("group"):
        row = conf[conf["group"] == group].iloc[0]
        x = g["test_acc_at_best_val"].to_numpy(float)
        assert row["n"] == len(x)
        assert row["test_acc_at_best_val_mean"] == pytest.approx(x.mean(), abs=1e-8)
        assert row["final_test_acc_mean"] == pytest.approx(g["final_test_acc"].mean(), abs=1e-8)
        assert row["best_test_acc_mean"] == pytest.approx(g["best_test_acc"].mean(), abs=1e-8)
        if len(x) >= 2:
            half = sps.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
            assert row["test_acc_at_best_val_ci_low"] == pytest.approx(x.mean() - half, abs=1e-8)
            assert row["test_acc_at_best_val_ci_high"] == pytest.approx(x.mean() + half, abs=1e-8)
        else:
            assert math.isnan(row["test_acc_at_best_val_ci_low"])
    # the formatted Markdown carries the same numbers
    csg = fin[(fin["arch"] == "resnet20") & (fin["method"] == "csg") & (fin["variant"] == "S16 d72")]
    d = stats.describe(csg["test_acc_at_best_val"])
    md = (report_dir / "tables" / "configurations.md").read_text()
    assert f"{d['mean']:.2f} [{d['ci_low']:.2f}, {d['ci_high']:.2f}]" in md
    assert "1 seed, no interval" in md                # resnet56 CSG has one seed
    main = pd.read_csv(report_dir / "tables" / "main_table.csv")
    r = main[(main["arch"] == "resnet20") & (main["csg_variant"] == "S16 d72")].iloc[0]
    assert r["csg_test_acc_at_best_val_mean"] == pytest.approx(d["mean"], abs=1e-8)
    assert r["authors_csg_acc"] == 91.64 and r["authors_plain_acc"] == 91.98  # from reference/
    assert r["csg_params_stored"] == 176698 and r["plain_params_total"] == 269722


def resnet20_fit(runs, reference_group):
    """statsmodels' own OLS on the resnet20 runs, coded so that each coefficient is a contrast with one group."""
    import statsmodels.formula.api as smf

    fin = runs.finished
    r20 = fin[fin["arch"] == "resnet20"].assign(seed=lambda f: f["seed"].astype(int))
    fit = smf.ols(f"test_acc_at_best_val ~ C(group, Treatment(reference='{reference_group}')) + C(seed)", data=r20).fit()
    return fit, lambda g: f"C(group, Treatment(reference='{reference_group}'))[T.{g}]"


def test_method_comparison_reads_every_contrast_from_one_model(report_dir, runs):
    comp = pd.read_csv(report_dir / "tables" / "method_comparison.csv")
    d72 = comp[(comp["arch"] == "resnet20") & (comp["csg_variant"] == "S16 d72")]
    by = d72.set_index("method")
    assert set(by.index) == {"csg", "none", "prune", "lowrank"}      # budget-matched baselines found
    fit, coef = resnet20_fit(runs, by.loc["csg", "group"])
    assert fit.df_resid == 8                                        # 17 runs, 7 configurations, 3 seeds
    for method, m in (("prune", 2), ("lowrank", 2), ("none", 4)):   # 2 baselines; 4 CSG configurations vs plain
        lo, hi = fit.conf_int(alpha=0.05 / m).loc[coef(by.loc[method, "group"])]
        assert by.loc[method, "diff_vs_csg"] == pytest.approx(fit.params[coef(by.loc[method, "group"])], abs=1e-8)
        assert (by.loc[method, "diff_ci_low"], by.loc[method, "diff_ci_high"]) == pytest.approx((lo, hi), abs=1e-8)
        assert by.loc[method, "m"] == m and by.loc[method, "df"] == 8
    # a random-binary CSG has another stored count: the baselines were not matched to it
    binary = comp[(comp["arch"] == "resnet20") & (comp["csg_variant"] == "S16 d72 binary")]
    assert set(binary["method"]) == {"csg", "none"}
    r56 = comp[(comp["arch"] == "resnet56") & (comp["method"] == "none")].iloc[0]
    assert math.isnan(r56["diff_ci_low"]) and "no residual degrees of freedom" in r56["reason"]  # CSG: one seed


def test_non_finished_runs_are_excluded_and_listed(report_dir, runs):
    allr = runs.runs
    assert len(allr) == 24
    assert sorted(allr.loc[allr["status"] != "FINISHED", "status"]) == ["FAILED", "KILLED", "RUNNING"]
    fin = runs.finished
    assert set(fin["status"]) == {"FINISHED"} and len(fin) == 20      # 21 FINISHED, one superseded
    plain = fin[(fin["arch"] == "resnet20") & (fin["method"] == "none")]
    assert sorted(plain["seed"]) == [0, 1, 2]                       # not the RUNNING seed 3
    later = allr[(allr["run_name"] == "resnet20-none-s0")].sort_values("start_time")
    assert list(later["superseded"]) == [True, False]
    assert plain.set_index("seed").loc[0, "run_id"] == later.iloc[1]["run_id"]
    conf = pd.read_csv(report_dir / "tables" / "configurations.csv")
    assert not conf["method"].isin(["hashed", "width"]).any()         # FAILED / KILLED only
    text = (report_dir / "REPORT.md").read_text()
    section = text[text.index("## Runs left out"):]
    for name in ("resnet20-hashed-t176698-s0", "resnet20-width-t176698-s0", "resnet20-none-s3"):
        assert name in section
    assert "RuntimeError: out of memory" in section and "superseded" in section
    # the grid table lists the precision the runs that logged one used, not a 'none' for the others
    assert "| precision_used | fp32 |" in text
    man = pd.read_csv(report_dir / "manifest.csv")
    assert len(man) == 24 and {"run_name", "config_hash", "status", "test_acc_at_best_val"} <= set(man.columns)


def test_rerun_gives_identical_tables(report_dir, store, tmp_path):
    from analysis.__main__ import main
    assert main(["report", "--tracking-uri", store, "--experiment", "quick", "--out", str(tmp_path)]) == 0
    for name in TABLES:
        for ext in ("md", "tex", "csv"):
            assert (tmp_path / "tables" / f"{name}.{ext}").read_bytes() == \
                (report_dir / "tables" / f"{name}.{ext}").read_bytes(), (name, ext)
    assert (tmp_path / "manifest.csv").read_bytes() == (report_dir / "manifest.csv").read_bytes()


def test_bad_experiment_exits_2_with_one_line(store):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "analysis", "report", "--tracking-uri", store, "--experiment", "nope"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope" in lines[0] and "Traceback" not in proc.stderr


@pytest.mark.parametrize("argv, needle", [
    (["report", "--x", "bogus"], "--x"),
    (["report", "--tracking-uri", "sqlite:////nonexistent/dir/mlflow.db"], "no MLflow store"),
    (["ui", "--port", "0", "--tracking-uri", "sqlite:////nonexistent/mlflow.db"], "--port"),
])
def test_bad_arguments_exit_2(argv, needle, capsys):
    from analysis.__main__ import main
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0]


def test_empty_store_exits_2(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from analysis.__main__ import main
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # creates the database, with no runs
    assert main(["report", "--tracking-uri", uri, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no runs" in err[0]


def test_evidence_section_states_the_intervals_it_computes(report_dir, runs):
    text = (report_dir / "REPORT.md").read_text()
    section = text[text.index("## What the evidence says"):text.index("## How our protocol differs")]
    comp = pd.read_csv(report_dir / "tables" / "method_comparison.csv")
    d72 = comp[(comp["arch"] == "resnet20") & (comp["csg_variant"] == "S16 d72")].set_index("method")
    fit, coef = resnet20_fit(runs, d72.loc["csg", "group"])
    lo, hi = fit.conf_int(alpha=0.05 / 4).loc[coef(d72.loc["none", "group"])]
    assert (f"Plain − CSG = {tables.fmt_signed(fit.params[coef(d72.loc['none', 'group'])])} points, simultaneous 95% "
            f"CI [{tables.fmt_signed(lo)}, {tables.fmt_signed(hi)}] (Bonferroni over 4; 8 residual df)") in section
    binary = comp[(comp["csg_variant"] == "S16 d72 binary") & (comp["relation"] == "CSG")].iloc[0]["group"]
    lo, hi = fit.conf_int(alpha=0.05 / 2).loc[coef(binary)]                # two binary-vs-learned twins
    line = next(p for p in section.split("\n\n") if p.startswith("At 6 epochs, CSG S16 d72 binary (resnet20;"))
    assert f"CI [{tables.fmt_signed(lo)}, {tables.fmt_signed(hi)}] (Bonferroni over 2; 8 residual df)" in line
    assert ("costs accuracy" in line) == (hi < 0)
    # resnet56's CSG ran one seed and its plain network two: that model has no residual degrees of freedom
    r56 = next(p for p in section.split("\n\n") if "(resnet56) stores" in p)
    assert "no interval: the model for resnet56 at 6 epochs has no residual degrees of freedom" in r56
    assert "The model for resnet20 at 6 epochs: 17 runs of 7 configuration(s) over 3 seed(s); residual SD " \
           f"{math.sqrt(fit.scale):.2f} points on 8 residual degrees of freedom." in section
    assert "≈" not in section and "Benjamini" not in section


def test_a_grid_without_csg_reports_that_there_is_nothing_to_compare(runs):
    from analysis.evidence import findings
    from analysis.reference import paper_reference
    plain = runs.finished[runs.finished["method"] == "none"]
    summary = stats.summarize(plain)
    comp = stats.comparisons(summary, plain)
    assert comp.empty
    assert findings(summary, comp, plain, paper_reference())[-1].startswith("Nothing to compare")


def test_parameter_ratios_read_fewer_or_more():
    assert tables.fmt_fewer(269_722, 176_698) == "1.53× fewer"
    assert tables.fmt_fewer(269_722, 312_218) == "1.16× more"  # CSG 16/128 on ResNet-20 is larger than plain
    assert tables.fmt_fewer(269_722, 0) == tables.DASH


def test_the_default_parameter_axis_puts_each_method_at_its_budget_count():
    summary = pd.DataFrame({
        "method": ["none", "csg", "prune"], "budget_count": ["total", "stored", "nonzero"],
        "params_total": [269_722.0, 176_698.0, 269_722.0], "params_stored": [269_722.0, 10_810.0, 269_722.0],
        "params_nonzero": [269_722.0, 176_698.0, 176_698.0]})
    assert figures.plotted_counts(summary, "budget").tolist() == [269_722.0, 10_810.0, 176_698.0]
    assert figures.plotted_counts(summary, "total").tolist() == [269_722.0, 176_698.0, 269_722.0]
    assert figures._short_count(176_698) == "177k" and figures._short_count(1_500_000) == "1.5M"


def test_breakdown_reads_the_logged_counts_and_names_what_has_none():
    """The table comes from each configuration's logged `breakdown_*` metrics, never from rebuilding
    the network; a configuration whose runs logged none is named, with the command that adds it."""
    from analysis.breakdown import breakdown
    from study.schema import BREAKDOWN, BREAKDOWN_TOTAL

    logged = {"convolutions (not generated)": 175_536, "classifier": 650, "normalisation": 1_376, "other": 47}
    metrics = {BREAKDOWN[c]: float(logged.get(c, 0)) for c in BREAKDOWN} | {BREAKDOWN_TOTAL: 177_609.0}
    runs = [("softshare", {"layers": "authors", "templates": "[2, 4, 3]"}, metrics),
            ("filterprune", {"layers": "authors", "prune_at": 0.5, "ratio": 0.35}, {})]
    finished = pd.DataFrame([{"group": m, "arch": "resnet20", "method": m, "seed": 0, "epochs": 10,
                              "method_args": json.dumps(sorted(args)), **args, **counts} for m, args, counts in runs])
    summary = pd.DataFrame([{"group": m, "arch": "resnet20", "method": m, "variant": m, "target_params": None,
                             "params_total": 177_609.0} for m, _, _ in runs])
    table, skipped = breakdown(summary, finished)
    assert table.set_index("method").loc["softshare", ["other", "total", "logged_total"]].tolist() == [47, 177_609, 177_609]
    assert list(table["method"]) == ["softshare"]
    assert skipped == ["resnet20 filterprune filterprune: its runs logged no parameter breakdown "
                       "(`python -m study backfill-metadata` adds it)"]
