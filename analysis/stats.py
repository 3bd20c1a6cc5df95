"""Statistics over seeds: mean, std and a 95% t-interval per configuration, and tests between methods.

A configuration (a *group*) is every config value except the seed.  With one seed there is no
interval.  Two configurations are tested only where both have at least two seeds: a paired t-test
over the seeds they share when their seed sets are identical (the seed fixes the validation split and
the data order, so runs with the same seed are paired), otherwise Welch's unequal-variance t-test.  Each test carries a 95% interval for the difference, and
the p-values of one table are adjusted together (Benjamini–Hochberg).  Where a side has one seed, an
approximate interval uses the seed-to-seed SD pooled over the grid (`pooled_seed_sd`), labelled as such.

The headline accuracy is `test_acc_at_best_val` (test accuracy at the epoch of best validation
accuracy); `final_test_acc` is reported beside it, and `best_test_acc` (the best test epoch, the
authors' rule) only in its own clearly labelled column.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as sps

from analysis.load import (METHOD_LABEL, NOT_IN_GROUP, parse_value, python_value, sort_key_frame)

CONFIDENCE = 0.95
HEADLINE = "test_acc_at_best_val"
ACC_METRICS = ["test_acc_at_best_val", "final_test_acc", "best_val_acc", "best_test_acc"]
METRIC_LABEL = {
    "test_acc_at_best_val": "test acc. at best val. epoch",
    "final_test_acc": "final test acc.",
    "best_val_acc": "best val. acc.",
    "best_test_acc": "best test epoch (paper's rule)",
}
COUNT_COLUMNS = ["params_total", "params_trainable", "params_frozen", "params_stored", "params_nonzero",
                 "bytes_on_disk", "flops", "macs", "kernel_gen_flops"]
NO_INTERVAL = "1 seed, no interval"


def describe(values) -> dict:
    """n, mean, std (ddof=1), standard error and the two-sided 95% t-interval of the mean."""
    x = np.asarray([v for v in np.asarray(values, dtype=float) if not np.isnan(v)], dtype=float)
    n = len(x)
    out = {"n": n, "mean": float(x.mean()) if n else math.nan, "std": math.nan, "sem": math.nan,
           "half_width": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    if n >= 2:
        std = float(x.std(ddof=1))
        sem = std / math.sqrt(n)
        half = _t(n - 1) * sem
        out.update(std=std, sem=sem, half_width=half, ci_low=out["mean"] - half, ci_high=out["mean"] + half)
    return out


def compare(a: pd.Series, b: pd.Series) -> dict:
    """Test mean(a) - mean(b); `a` and `b` are accuracies indexed by seed.

    Paired t-test when both sides have the same seeds (at least two), Welch's t-test when their
    seeds differ and each side has at least two, and no test otherwise.
    """
    a, b = a.dropna().astype(float), b.dropna().astype(float)
    out = {"test": "none (needs >= 2 seeds on each side)", "statistic": math.nan, "df": math.nan,
           "pvalue": math.nan, "diff": (a.mean() - b.mean()) if len(a) and len(b) else math.nan,
           "ci_low": math.nan, "ci_high": math.nan, "n_a": len(a), "n_b": len(b)}
    if len(a) < 2 or len(b) < 2:
        return out
    if a.index.is_unique and b.index.is_unique and set(a.index) == set(b.index):
        seeds = sorted(a.index)
        res = sps.ttest_rel(a.loc[seeds].to_numpy(), b.loc[seeds].to_numpy())
        d = a.loc[seeds].to_numpy() - b.loc[seeds].to_numpy()
        if np.allclose(d, d[0]):  # a constant difference: the paired statistic is undefined
            return {**out, "test": "paired t-test (by seed); constant difference, undefined"}
        half = _t(len(seeds) - 1) * d.std(ddof=1) / math.sqrt(len(seeds))
        out.update(test="paired t-test (by seed)", statistic=float(res.statistic), df=float(len(seeds) - 1),
                   pvalue=float(res.pvalue), ci_low=out["diff"] - half, ci_high=out["diff"] + half)
    else:
        res = sps.ttest_ind(a.to_numpy(), b.to_numpy(), equal_var=False)
        va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
        df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if va + vb > 0 else math.nan
        half = _t(df) * math.sqrt(va + vb) if not math.isnan(df) else math.nan
        out.update(test="Welch t-test", statistic=float(res.statistic), df=float(df), pvalue=float(res.pvalue),
                   ci_low=out["diff"] - half, ci_high=out["diff"] + half)
    return out


def _t(df: float) -> float:
    """The two-sided critical value of Student's t at CONFIDENCE."""
    return float(sps.t.ppf(0.5 + CONFIDENCE / 2, df=df))


def pooled_seed_sd(finished: pd.DataFrame, metric: str = HEADLINE) -> tuple[float, int]:
    """The seed-to-seed standard deviation pooled over every configuration with >= 2 seeds, and its df.

    It lets a one-seed comparison be set against the noise this grid shows, on the stated assumption
    that every method is about as noisy as the ones run with several seeds.
    """
    ss, df = 0.0, 0
    for _, g in finished.groupby("group"):
        x = g[metric].dropna().astype(float)
        if len(x) >= 2:
            ss += float(((x - x.mean()) ** 2).sum())
            df += len(x) - 1
    return (math.sqrt(ss / df), df) if df else (math.nan, 0)


def approximate_interval(diff: float, n_a: int, n_b: int, sd: float, df: int) -> tuple[float, float]:
    """A 95% interval for a difference of means from the pooled seed SD (for sides with too few seeds)."""
    if not df or math.isnan(sd) or not n_a or not n_b:
        return math.nan, math.nan
    half = _t(df) * sd * math.sqrt(1 / n_a + 1 / n_b)
    return diff - half, diff + half


def adjust_pvalues(p: pd.Series) -> pd.Series:
    """Benjamini–Hochberg adjusted p-values (q) over the tests that were run; NaN where none was."""
    q = pd.Series(math.nan, index=p.index, dtype=float)
    ran = p.dropna()
    if len(ran):
        q[ran.index] = sps.false_discovery_control(ran.to_numpy(), method="bh")
    return q


# -- per configuration ----------------------------------------------------------------------------
def varying_protocol(finished: pd.DataFrame, config_cols: list[str]) -> list[str]:
    """Config columns (other than arch, method, method args, seed) whose value differs between runs."""
    out = []
    for c in config_cols:
        if c in NOT_IN_GROUP or c in ("arch", "method", "target_params") or c not in finished:
            continue
        if finished[c].astype(str).nunique(dropna=False) > 1:
            out.append(c)
    return out


def summarize(finished: pd.DataFrame, protocol_cols: list[str] | None = None,
              arg_cols: list[str] | None = None) -> pd.DataFrame:
    """One row per configuration: identity columns, method arguments, counts, and mean/std/CI of every accuracy."""
    protocol_cols = protocol_cols or []
    arg_cols = [c for c in (arg_cols or []) if c not in protocol_cols]
    rows = []
    for group, g in finished.groupby("group", sort=False):
        g = g.sort_values("seed")
        first = g.iloc[0]
        row = {"group": group, "arch": first["arch"], "method": first["method"],
               "method_label": METHOD_LABEL.get(first["method"], first["method"]), "variant": first["variant"]}
        for c in protocol_cols + arg_cols:
            row[c] = python_value(first[c]) if c in first else None
        row["target_params"] = python_value(first.get("target_params"))
        row["budget_count"] = python_value(first.get("budget_count")) or ""
        row["n"] = int(g["seed"].notna().sum()) if g["seed"].notna().any() else len(g)
        row["seeds"] = ",".join(str(python_value(s)) for s in g["seed"] if python_value(s) is not None)
        row["epochs"] = python_value(first.get("epochs"))
        for c in COUNT_COLUMNS:
            row[c] = float(g[c].mean()) if c in g and g[c].notna().any() else math.nan
        for m in ACC_METRICS:
            d = describe(g[m]) if m in g else describe([])
            for k in ("n", "mean", "std", "ci_low", "ci_high", "half_width"):
                row[f"{m}_{k}"] = d[k]
        row["train_seconds_sum"] = float(g["train_seconds"].sum()) if "train_seconds" in g else math.nan
        row["run_names"] = ",".join(g["run_name"].astype(str))
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    keys = sort_key_frame(table)
    keys["_g"] = table["group"]
    order = sorted(table.index, key=lambda i: tuple(keys.loc[i]))
    return table.loc[order].reset_index(drop=True)


def counted(row, count: str | None) -> float:
    """A configuration's parameter count on the named accounting (total if unnamed)."""
    count = count or "total"
    return row.get(f"params_{count}", math.nan)


def _same_target(target, csg_row, csg_names: set[str]) -> bool:
    """Was this budget set from this CSG configuration? An int equal to one of its counts, or its run name."""
    if target is None:
        return False
    t = parse_value(str(target))
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        # CSG's budget is its own count (`stored` unless the run says otherwise)
        return abs(counted(csg_row, csg_row.get("budget_count") or "stored") - t) < 0.5
    return str(t) in csg_names or str(t).startswith("group:") and str(t)[6:] == csg_row["group"]


def comparisons(summary: pd.DataFrame, finished: pd.DataFrame) -> pd.DataFrame:
    """For each CSG configuration: the plain network and every baseline matched to its budget.

    Matched means same architecture, same training protocol and a baseline whose `target_params`
    was CSG's parameter count (or the CSG run's name).  The plain network is matched on architecture
    and protocol.  `diff` is (method - CSG) in accuracy points, tested per `compare`.
    """
    rows = []
    if summary.empty:
        return pd.DataFrame()
    protocol = finished.groupby("group")["protocol"].first()
    names = finished.groupby("group")["run_name"].apply(set)
    raw_targets = finished.groupby("group")["target_params"].first() if "target_params" in finished else None
    by_group_seed = {g: d.set_index("seed") for g, d in finished.groupby("group")}
    for _, csg in summary[summary["method"] == "csg"].iterrows():
        same = summary[(summary["arch"] == csg["arch"]) & (summary["group"] != csg["group"])]
        same = same[same["group"].map(protocol) == protocol[csg["group"]]]
        budget = counted(csg, "stored")
        partners = [("CSG", csg)]
        for _, other in same.iterrows():
            if other["method"] == "none":
                partners.append(("plain network", other))
            elif other["method"] != "csg":
                target = raw_targets.get(other["group"]) if raw_targets is not None else None
                if _same_target(python_value(target), csg, names[csg["group"]]):
                    partners.append(("matched budget", other))
        for relation, other in partners:
            row = {"arch": csg["arch"], "csg_group": csg["group"], "csg_variant": csg["variant"],
                   "csg_params_stored": budget, "relation": relation, "group": other["group"],
                   "method": other["method"], "method_label": other["method_label"], "variant": other["variant"],
                   "budget_count": other["budget_count"] or ("stored" if other["method"] == "csg" else "total"),
                   "n": other["n"], "seeds": other["seeds"]}
            row["params_counted"] = counted(other, row["budget_count"])
            for c in ("params_total", "params_stored", "params_nonzero"):
                row[c] = other[c]
            for m in ACC_METRICS:
                for k in ("mean", "std", "ci_low", "ci_high", "n"):
                    row[f"{m}_{k}"] = other[f"{m}_{k}"]
            for m in ("test_acc_at_best_val", "final_test_acc"):
                if relation == "CSG":
                    res = {"test": "", "statistic": math.nan, "df": math.nan, "pvalue": math.nan, "diff": math.nan,
                           "ci_low": math.nan, "ci_high": math.nan}
                else:
                    a = by_group_seed[other["group"]][m]
                    b = by_group_seed[csg["group"]][m]
                    res = compare(a, b)
                prefix = "" if m == HEADLINE else "final_"
                row[f"{prefix}diff_vs_csg"] = res["diff"]
                row[f"{prefix}test"] = res["test"]
                row[f"{prefix}t"] = res["statistic"]
                row[f"{prefix}df"] = res["df"]
                row[f"{prefix}p"] = res["pvalue"]
                row[f"{prefix}diff_ci_low"], row[f"{prefix}diff_ci_high"] = res["ci_low"], res["ci_high"]
            rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:  # no CSG configuration finished: nothing to compare with
        return out
    for prefix in ("", "final_"):  # one family per accuracy metric: every test of the table
        out[f"{prefix}q"] = adjust_pvalues(out[f"{prefix}p"])
    return out
