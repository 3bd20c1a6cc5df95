"""results/: figures, tables, manifest.csv and REPORT.md, all generated from one MLflow store.

Every number in REPORT.md comes from the runs (or from the committed reference files); nothing about
our protocol is hard-coded, so the text stays true when the grid changes.
"""
from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import breakdown as breakdown_mod
from analysis import evidence, figures, reference, tables
from analysis.load import (FINAL_METRICS, MANIFEST_EXTRA, MANIFEST_RECIPE, REPO, Runs, epochs_wide, python_value)
from analysis.reference import AUTHORS_BATCH, AUTHORS_EPOCHS, AUTHORS_PROTOCOL
from analysis.stats import comparisons, summarize, varying_protocol
from study.schema import HEADLINE

X_CHOICES = ("budget", "total", "stored", "nonzero")


# -- environment ------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("torch", "mlflow", "numpy", "pandas", "scipy", "matplotlib", "seaborn"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:
            out[mod] = "not installed"
    return out


# -- helpers ----------------------------------------------------------------------------------------
def _values(frame: pd.DataFrame, col: str) -> list:
    if col not in frame:
        return []
    vals = {json.dumps(python_value(v), default=str) for v in frame[col]}

    def order(v):  # numbers by value (2 before 10), then the rest by type and text, none last
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        return v is None, not number, v if number else 0, str(type(v)), str(v)
    return sorted((json.loads(v) for v in vals), key=order)


def _fmt_values(vals: list) -> str:
    return ", ".join("none" if v is None else str(v) for v in vals)


def _hours(seconds: float) -> str:
    if seconds is None or math.isnan(seconds):
        return "unknown"
    return f"{seconds / 3600:.2f} h ({seconds:,.0f} s)"


def _range(vals: list) -> str:
    vals = [v for v in vals if v is not None]
    if not vals:
        return "unknown"
    lo, hi = min(vals), max(vals)
    return f"{lo}" if lo == hi else f"{lo}–{hi}"


def lists_recipe(runs: Runs) -> bool:
    """Do the runs carry their training settings?  From the store always; from a manifest written since it lists them."""
    return bool(set(MANIFEST_RECIPE) & set(runs.config_columns))


def protocol_paragraphs(runs: Runs, summary: pd.DataFrame) -> list[str]:
    """How our protocol departs from the paper's, read from the runs' own params and metrics."""
    fin = runs.finished
    if fin.empty:
        return ["No run FINISHED, so there is no protocol of ours to set beside the authors' yet."]
    out = []
    curves = reference.authors_curves()
    a_epochs = curves.groupby("run")["epoch"].max()
    epochs = [v for v in _values(fin, "epochs") if v is not None]
    done = [int(v) for v in fin["epochs_completed"].dropna()] if "epochs_completed" in fin else []
    how = (f"completed {_fmt_values(epochs)} epoch(s) (the manifest's `epochs_completed`)" if runs.manifest else
           f"were configured for {_fmt_values(epochs) or 'an unknown number of'} epoch(s)"
           + (f" and logged {_range(done)} epoch(s) of metrics" if done else ""))
    out.append(
        f"**Training length.** Our FINISHED runs {how}" +
        f"; the authors trained for about {AUTHORS_EPOCHS} epochs (their logs in `reference/authors_curves.csv` run "
        f"{int(a_epochs.min())}–{int(a_epochs.max())} epochs). "
        + ("Shorter training lowers accuracy for every method, so compare methods within this report and read the "
           "authors' numbers as a ceiling, not a target." if epochs and max(epochs) < 150 else
           "The training length is comparable to theirs." if epochs else ""))
    val = _values(fin, "val_size")
    held = (f"We hold out {_fmt_values(val)} training image(s) as a validation split, select" if val else
            "We hold out a validation split of the training images (its size is not in the manifest), select")
    sel = (f"**Model selection.** {held} "
           f"the epoch with the best validation accuracy and report the test accuracy at that epoch (the headline), "
           f"together with the final epoch's test accuracy. The authors report the best test-set epoch, i.e. they "
           f"select on the test set.")
    if HEADLINE in fin and "best_test_acc" in fin:
        gap = (fin["best_test_acc"] - fin[HEADLINE]).dropna()
        if len(gap):
            sel += (f" Over our {len(gap)} FINISHED runs the authors' rule reads {gap.mean():.2f} points higher on "
                    f"average (range {gap.min():.2f}–{gap.max():.2f}) than validation-based selection: that is its "
                    f"optimism on this grid, shown in the separate 'best test epoch (paper's rule)' columns.")
    if val and all(v not in (None, 0) for v in val):
        sel += (" Holding out the validation images also means our networks train on fewer images than theirs "
                "(50,000 on CIFAR-10).")
    out.append(sel)
    if not summary.empty:
        ns = summary["n"].astype(int)
        seeds = f"{ns.min()}" if ns.min() == ns.max() else f"{ns.min()}–{ns.max()}"
        one = int((ns == 1).sum())
        out.append(f"**Seeds.** Each configuration ran with {seeds} seed(s) (the seed fixes initialisation, the "
                   f"validation split and the data order); we report each configuration's mean and a 95% t-interval, "
                   f"and compare configurations through the model of 'What the evidence says'. "
                   + (f"{one} configuration(s) have a single seed and therefore no interval. " if one else "")
                   + "The authors report one run per network, so their numbers carry no interval and a "
                     "difference of a few tenths of a point between theirs and ours is within seed-to-seed noise.")
    subset = []
    for col, what in (("train_subset", "training on a subset of {} training images"),
                      ("test_subset", "evaluating on {} test images instead of all 10,000")):
        vals = [v for v in _values(fin, col) if v is not None]
        if vals:
            subset.append(what.format(_fmt_values(vals)))
    if subset:
        out.append("**Data.** Some runs used reduced data: " + "; ".join(subset) + ". Their accuracies are not "
                   "comparable to full-data numbers.")
    diffs = []
    for key, theirs in AUTHORS_PROTOCOL.items():
        vals = _values(fin, key)
        if not vals:
            continue
        mismatch = [v for v in vals if (v != theirs if not isinstance(theirs, float) or not isinstance(v, (int, float))
                                        else not math.isclose(float(v), theirs))]
        if mismatch:
            diffs.append(f"{key} {_fmt_values(vals)} (authors: {theirs})")
    for _, r in fin.drop_duplicates("arch").iterrows():
        fam = next((f for f in AUTHORS_BATCH if str(r["arch"]).startswith(f)), None)
        bs = _values(fin[fin["arch"] == r["arch"]], "batch_size")
        if fam and bs and any(b != AUTHORS_BATCH[fam] for b in bs):
            diffs.append(f"batch size {_fmt_values(bs)} for {r['arch']} (authors: {AUTHORS_BATCH[fam]})")
    prec = _values(fin, "precision_used")
    if any(p not in (None, "fp32") for p in prec):
        diffs.append(f"arithmetic precision {_fmt_values(prec)} (authors: fp32)")
    if runs.manifest and not lists_recipe(runs):
        out.append(f"**Not in the manifest.** This report was regenerated from `{runs.manifest}`, which lists each "
                   "run's identity, seed, final metrics and parameter counts but not its training settings (optimiser, "
                   "schedule, batch size, data subsets, validation split, precision): how they differ from the "
                   "authors' recipe is not restated here. The grid file under 'Grid configuration' gives them as it reads "
                   "now; the report regenerated from the MLflow store reads them from the runs.")
    elif diffs:
        out.append("**Optimisation.** Where our settings differ from the authors' CIFAR recipe (SGD, momentum 0.9, "
                   "weight decay 5e-4, LR 0.05 → 0.005 → 0.0005 at 50% and 75% of training): " + "; ".join(diffs) + ".")
    else:
        out.append("**Optimisation.** Our optimiser settings match the authors' CIFAR recipe (SGD, momentum 0.9, "
                   "weight decay 5e-4, step schedule at 50% and 75% of training).")
    return out


def headline_sentences(comp: pd.DataFrame) -> list[str]:
    out = []
    if comp.empty:
        return out
    for csg_group, c in comp.groupby("csg_group", sort=False):
        csg = c[c["relation"] == "CSG"].iloc[0]
        for _, r in c[c["relation"] == "plain network"].iterrows():
            if math.isnan(r["diff_ci_low"]):
                test = "no interval"
            else:
                test = (f"simultaneous 95% CI {tables.fmt_interval(r['diff_ci_low'], r['diff_ci_high'])}, "
                        + ("resolved" if r["resolved"] else "not resolved"))
            out.append(f"{csg['arch']}, CSG {csg['csg_variant']}, {evidence.when(r['epochs'], evidence.recipe_of(r))}: "
                       f"{tables.fmt_acc_row(csg, HEADLINE)} vs plain {tables.fmt_acc_row(r, HEADLINE)} (plain − CSG = "
                       f"{tables.fmt_signed(r['diff_vs_csg'])} points; {test}) with "
                       f"{tables.fmt_fewer(r['params_total'], csg['params_stored'])} stored parameters.")
    return out


def grid_section(runs: Runs, experiments: list[str]) -> str:
    fin = runs.runs
    cfg = [k for k in runs.config_columns if k != "method_args"] + runs.method_arg_columns + ["budget_count", "knob",
                                                                                          "precision_used"]
    constant, varying = [], []
    for k in cfg:
        if k == "name":  # one per run: the manifest lists them
            continue
        vals = _values(fin, k)
        if k == "precision_used":  # logged when a run ends: a run still training has none yet
            vals = [v for v in vals if v is not None]
        if not vals:
            continue
        (constant if len(vals) == 1 else varying).append((k, vals))
    rest = ("the training settings from their own columns." if lists_recipe(runs) else
            "the other settings are not in the manifest.")
    where = ("Read from the manifest (all statuses): method arguments from the variant labels (numbers as they print "
             "them, to 6 significant digits), the training length from `epochs_completed`, the budget count and "
             f"knob from each method's own declaration; {rest}" if runs.manifest else
             "Read from the runs' logged params (all statuses).")
    lines = [where, "",
             "| param | value(s) |", "|---|---|"]
    lines += [f"| {k} | {tables.md_escape(_fmt_values(v))} |" for k, v in constant]
    lines += [f"| {k} (varies) | {tables.md_escape(_fmt_values(v))} |" for k, v in varying]
    for exp in experiments:
        path = REPO / "configs" / f"{exp}.yaml"
        if path.exists():
            lines += ["", f"The grid file `configs/{exp}.yaml` as it is in the repository now (runs made before an "
                          f"edit to it keep the settings they logged):", "", "```yaml", path.read_text().rstrip(), "```"]
    return "\n".join(lines)


def manifest(runs: Runs) -> pd.DataFrame:
    cols = ["experiment", "run_name", "run_id", "config_hash", "group", "status", "superseded", "failure_reason",
            "arch", "method", "variant", "seed", "epochs_completed"] + MANIFEST_RECIPE + FINAL_METRICS + MANIFEST_EXTRA
    m = runs.runs.copy()
    for c in cols:
        if c not in m:
            m[c] = np.nan
    m = m[cols].sort_values(["experiment", "run_name", "run_id"], kind="stable")
    return m


# -- the whole report -------------------------------------------------------------------------------
def write(runs: Runs, out: Path, x: str = "budget") -> dict[str, list[Path]]:
    if x not in X_CHOICES:
        raise ValueError(f"x must be one of {X_CHOICES}")
    out = Path(out)
    fig_dir, tab_dir = out / "figures", out / "tables"
    fin = runs.finished
    protocol_cols = varying_protocol(fin, [k for k in runs.config_columns if k != "method_args"])
    summary = summarize(fin, protocol_cols, runs.method_arg_columns)
    comp = comparisons(summary, fin)
    ref = reference.paper_reference()
    wide = epochs_wide(runs)
    wide = wide[wide["status"].eq("FINISHED") & ~wide["superseded"].astype(bool)] if len(wide) else wide
    bd, skipped = breakdown_mod.breakdown(summary, fin)

    tabs = [tables.main_table(summary, fin, ref), tables.method_comparison(comp), tables.paper_vs_us(summary, ref),
            tables.configurations(summary, protocol_cols), tables.breakdown_table(bd, skipped)]
    written = {"tables": [], "figures": []}
    for t in tabs:
        written["tables"] += t.write(tab_dir)
    curves = not runs.manifest  # a manifest holds no per-epoch metrics: those figures stay as they are
    written["figures"] = figures.all_figures(summary, wide, tabs[2].data, bd, fig_dir, x, curves=curves, comp=comp,
                                             finished=fin)
    kept = set() if curves else {n for n in figures.CURVE_FIGURES if (fig_dir / f"{n}.png").exists()}

    text = render(runs, summary, comp, tabs, skipped, x, evidence.findings(summary, comp, fin, ref), kept)
    (out / "REPORT.md").write_text(text)
    written["report"] = [out / "REPORT.md"]
    if not runs.manifest:  # a report regenerated from a manifest leaves that manifest as it is
        man_path = out / "manifest.csv"
        manifest(runs).to_csv(man_path, index=False, float_format="%.10g", lineterminator="\n")
        written["report"].append(man_path)
    return written


FIGURE_CAPTIONS = {
    "acc_vs_params": "Accuracy (test at best validation epoch) against {x}, one panel per architecture; "
                     "error bars are 95% CIs over seeds, hollow markers have one seed; the dashed step line marks "
                     "the Pareto front.",
    "code_dim_sweep": "CSG code-dimension sweep: accuracy (top) and parameters (bottom) against the code dimension, "
                      "learned vs random-binary generator.",
    "training_curves": "Validation (top) and test (bottom) accuracy per epoch, mean over seeds, per configuration.",
    "curves_vs_authors": "Our test-accuracy curve (mean over seeds) beside the authors' logged run, against the "
                         "fraction of training done (the lengths differ).",
    "paper_vs_us": "The authors' reported accuracy (best test epoch, one run) and parameter counts beside ours.",
    "gap_vs_length": "Plain and CSG run with one recipe at several training lengths (log scale). Top: test accuracy "
                     "at the best-validation epoch, each seed and each length's mean, with the authors' numbers at "
                     "their {epochs} epochs (best test epoch, one run, their recipe). Bottom: plain − CSG at each "
                     "length with its simultaneous 95% interval (that length's model), the line in log2(epochs) fitted "
                     "to every run of the series, solid where we ran and dashed where it extrapolates to {epochs} "
                     "epochs, its band at the level of the interval 'What the evidence says' states at {epochs} "
                     "epochs, and the authors' gap.",
    "param_breakdown": "Where each network's parameters go: generator, codes, ordinary convolutions, classifier, "
                       "normalisation.",
}


def render(runs: Runs, summary, comp, tabs, skipped, x, findings: list[str], kept: set[str] = frozenset()) -> str:
    """REPORT.md.  `kept`: per-epoch figures a manifest-driven report left as an earlier run wrote them."""
    allr, fin = runs.runs, runs.finished
    exps = runs.experiments
    counts = allr["status"].value_counts()
    status_line = ", ".join(f"{counts[s]} {s}" for s in sorted(counts.index))
    which = f"experiment{'s' if len(exps) > 1 else ''}: {', '.join(exps)}"
    source = (f"Generated by `python -m analysis report --from-manifest {runs.manifest}` from the run table "
              f"`{runs.manifest}` ({which}), written earlier from the MLflow store, which this run did not read. "
              f"Rerun it to regenerate the tables and this file; the report regenerated from the store also rewrites "
              f"the per-epoch figures and the manifest." if runs.manifest else
              f"Generated by `python -m analysis report` from the MLflow store `{runs.tracking_uri}` ({which}). "
              f"Rerun it to regenerate every file.")
    L = [f"# Report: {', '.join(exps)}", "", source, "",
         f"**Runs:** {len(allr)} in all ({status_line}). {len(fin)} FINISHED run(s) enter the statistics, in "
         f"{len(summary)} configuration(s)."
         + (f" {len(runs.duplicates)} FINISHED run(s) were superseded by a later run of the same configuration and "
            f"seed and are left out." if len(runs.duplicates) else "")
         + (f" {len(allr) - counts.get('FINISHED', 0)} run(s) did not finish; they are listed under "
            f"[Runs left out](#runs-left-out) and never enter a mean." if len(allr) - counts.get("FINISHED", 0) else ""),
         "",
         "Headline accuracy: **test accuracy at the epoch of best validation accuracy**, mean over seeds with a "
         "95% t-interval. The authors' rule (best test-set epoch) appears only in columns labelled "
         "'best test epoch (paper's rule)'.", ""]
    heads = headline_sentences(comp)
    if heads:
        L += ["## Headline", ""] + [f"- {h}" for h in heads] + [""]
    L += ["## What the evidence says", "", "Computed from the runs. Every contrast within one training length comes "
          "from one linear model per experiment, architecture and training length, accuracy ~ configuration + seed (statsmodels OLS; the seed "
          "is a block, since it fixes the validation split, the data order and the initialisation for every method). "
          "Intervals are simultaneous 95% intervals over each family of contrasts (Bonferroni: each at level "
          "1 − 0.05/m for the m contrasts of the family), and a difference is called resolved only when its interval "
          "excludes zero. Where a configuration lacks a seed, its estimate is adjusted for that seed's effect as the "
          "other configurations show it. Where a model has no residual degrees of freedom there is no interval. "
          "Every verdict names the training length it comes from; a contrast across lengths names its own model "
          "(under 'The model').", ""]
    for f in findings:
        L += [f, ""]
    L += ["## How our protocol differs from the paper's", ""]
    for p in protocol_paragraphs(runs, summary):
        L += [p, ""]
    L += ["## Tables", "", "Each table is also written as LaTeX (`.tex`, booktabs) and CSV (raw numbers) under "
          "`tables/`.", ""]
    for t in tabs:
        L += [t.markdown(), ""]
    L += ["## Figures", "", "PNG and PDF under `figures/`.", ""]
    x_words = f"parameters ({figures.BUDGET_AXIS})" if x == "budget" else f"{x} parameters"
    for name in figures.FIGURES:
        caption = FIGURE_CAPTIONS[name].format(x=x_words, epochs=AUTHORS_EPOCHS)
        if runs.manifest and name in figures.CURVE_FIGURES:
            if name not in kept:
                L += [f"### {name.replace('_', ' ')}", "", caption + " Not available here: the manifest holds no "
                      "per-epoch metrics.", ""]
                continue
            caption += (" Not regenerated from the manifest (it holds no per-epoch metrics): this is the file "
                        "written earlier from the MLflow store.")
        L += [f"### {name.replace('_', ' ')}", "", f"![{name}](figures/{name}.png)", "",
              caption + f" ([PDF](figures/{name}.pdf))", ""]
    L += ["## Runs left out", ""]
    left = allr[(allr["status"] != "FINISHED") | allr["superseded"].astype(bool)]
    if left.empty:
        L += ["None: every run FINISHED.", ""]
    else:
        L += ["| run | experiment | status | reason |", "|---|---|---|---|"]
        for _, r in left.sort_values(["experiment", "run_name", "run_id"]).iterrows():
            reason = r["failure_reason"] or ("superseded by a later run of the same configuration and seed"
                                             if r["superseded"] else "")
            status = r["status"] + (" (superseded)" if r["superseded"] else "")
            L.append(f"| {tables.md_escape(r['run_name'])} | {tables.md_escape(r['experiment'])} | {status} | "
                     f"{tables.md_escape(reason) or '–'} |")
        L.append("")
    if skipped:
        L += ["Parameter breakdown: configurations whose runs logged none:", ""]
        L += [f"- {s}" for s in skipped] + [""]
    L += ["## Grid configuration", "", grid_section(runs, exps), ""]
    L += ["## Compute, software and hardware", ""]
    ts_fin = fin["train_seconds"].sum(min_count=1) if "train_seconds" in fin else math.nan
    ts_all = allr["train_seconds"].sum(min_count=1) if "train_seconds" in allr else math.nan
    L.append(f"- Total training time (sum of `train_seconds`): {_hours(float(ts_fin))} over FINISHED runs; "
             f"{_hours(float(ts_all))} over every run that logged it.")
    if not summary.empty and "train_seconds" in fin:
        per = fin.groupby("method")["train_seconds"].sum(min_count=1)
        L.append("- By method: " + ", ".join(f"{m} {_hours(float(per[m]))}" for m in sorted(per.index)) + ".")
    starts = pd.to_datetime(allr["start_time"].dropna(), unit="ms", utc=True)
    if len(starts):
        L.append(f"- Runs started between {starts.min():%Y-%m-%d %H:%M} and {starts.max():%Y-%m-%d %H:%M} UTC.")
    for col, what in (("device", "Training device(s)"), ("torch_version", "Training torch version(s)"),
                      ("precision_used", "Precision used"), ("git_commit", "Code commit(s)")):
        vals = [v for v in _values(allr, col) if v not in (None, "")]
        if vals:
            L.append(f"- {what} (from the runs): {', '.join(f'`{v}`' for v in vals)}.")
    if runs.manifest:
        L.append("- Not in the manifest: when the runs started, the training device, torch version, precision and "
                 "code commit (the report regenerated from the MLflow store lists them).")
    v = versions()
    L.append("- Analysis software: " + ", ".join(f"{k} {v[k]}" for k in v) + ".")
    L.append(f"- Analysis machine: {cpu_model()}, {os.cpu_count()} logical core(s), {platform.system()} "
             f"{platform.machine()}.")
    L.append("")
    return "\n".join(L)

