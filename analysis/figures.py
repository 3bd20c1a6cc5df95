"""Figures, PNG and PDF: seaborn's colour-blind palette plus a distinct marker per method (greyscale-safe).

Every figure is always written; where the experiment has no data for one, it says so on the canvas
(so the set of files never depends on the grid, and a stale figure is never left behind).
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as mticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from analysis import reference, stats  # noqa: E402
from analysis.load import METHOD_ORDER, arch_rank, python_value  # noqa: E402
from analysis.stats import METRIC_LABEL, counted  # noqa: E402
from study.schema import HEADLINE, method_label  # noqa: E402

PALETTE = sns.color_palette("colorblind", 10)
MARKERS = ["o", "s", "^", "v", "D", "P", "X", "*", "h", "<", ">", "p"]
METHOD_COLOR = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(METHOD_ORDER)}
METHOD_MARKER = {m: MARKERS[i % len(MARKERS)] for i, m in enumerate(METHOD_ORDER)}
FIGURES = ["acc_vs_params", "code_dim_sweep", "training_curves", "curves_vs_authors", "paper_vs_us",
           "gap_vs_length", "param_breakdown"]
CURVE_FIGURES = ("training_curves", "curves_vs_authors")  # drawn from per-epoch metrics


def _style():
    sns.set_theme(context="paper", style="whitegrid", palette="colorblind", font_scale=1.0)
    plt.rcParams.update({"svg.hashsalt": "analysis", "pdf.compression": 6, "figure.dpi": 100})


def color(method: str):
    return METHOD_COLOR.get(method, PALETTE[(len(METHOD_ORDER) + sum(map(ord, str(method)))) % len(PALETTE)])


def marker(method: str):
    return METHOD_MARKER.get(method, "p")


def save(fig, out_dir: Path, name: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(paths[1], bbox_inches="tight", metadata={"CreationDate": None, "ModDate": None})
    plt.close(fig)
    return paths


def placeholder(out_dir: Path, name: str, title: str, why: str) -> list[Path]:
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, why, ha="center", va="center", wrap=True, transform=ax.transAxes)
    return save(fig, out_dir, name)


def _panels(n: int, ncols: int = 3, size=(4.2, 3.4), rows_per=1, sharey=False):
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols) * rows_per
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False,
                             sharey=sharey)
    return fig, axes


def _paired_panels(n: int, ncols: int = 4, size=(4.4, 3.2)):
    """A figure with a (top, bottom) pair of axes per architecture, wrapped after `ncols` architectures."""
    ncols = max(1, min(ncols, n))
    blocks = math.ceil(n / ncols)
    fig, axes = plt.subplots(2 * blocks, ncols, figsize=(size[0] * ncols, size[1] * 2 * blocks), squeeze=False)
    pairs = [(axes[2 * (i // ncols), i % ncols], axes[2 * (i // ncols) + 1, i % ncols]) for i in range(n)]
    for i in range(n, blocks * ncols):
        axes[2 * (i // ncols), i % ncols].axis("off")
        axes[2 * (i // ncols) + 1, i % ncols].axis("off")
    return fig, pairs


def _archs(frame: pd.DataFrame) -> list[str]:
    return sorted(frame["arch"].dropna().unique(), key=lambda a: (arch_rank(a), a))


def panel_title(rows: pd.DataFrame, arch: str) -> str:
    """The architecture, and the training length its configurations ran for (one, after `at_longest`)."""
    epochs = sorted({int(e) for e in pd.to_numeric(rows.get("epochs", pd.Series(dtype=float)), errors="coerce")
                     .dropna()})
    return f"{arch}, {epochs[0]} epochs" if len(epochs) == 1 else arch


def _num(v) -> float:
    v = python_value(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def short_labels(frame: pd.DataFrame) -> list[str]:
    """A legend or axis label per configuration: method, plus its variant where that tells it apart (always
    for CSG; for a baseline, whose variant is its whole argument list, only if the architecture has several)."""
    per = frame.groupby(["arch", "method"])["method"].transform("size")
    out = []
    for (_, r), n in zip(frame.iterrows(), per):
        label = method_label(r["method"])
        if r["variant"] not in ("-", "") and (r["method"] == "csg" or n > 1):
            label += f" {r['variant']}"
        if r.get("recipe"):  # a length that ran the configuration under two recipes or precisions
            label += f", {r['recipe']}"
        out.append(label)
    return out


def _short_count(v: float, _pos=None) -> str:
    """176,698 -> '177k', 1,500,000 -> '1.5M': tick labels that never collide."""
    for scale, unit in ((1e6, "M"), (1e3, "k")):
        if v >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:.3g}"


def log_count_axis(axis) -> None:
    """A log-scaled parameter axis labelled at 1, 2 and 5 of each decade, in k / M, no minor labels."""
    axis.set_major_locator(mticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(mticker.FuncFormatter(_short_count))
    axis.set_minor_formatter(mticker.NullFormatter())


def plotted_counts(summary: pd.DataFrame, x: str) -> pd.Series:
    """Each configuration's parameter count on accounting `x`; "budget" is the count its method is
    matched on (the run's `budget_count`)."""
    if x != "budget":
        return summary[f"params_{x}"]
    return pd.Series([counted(r, r["budget_count"]) for _, r in summary.iterrows()], index=summary.index, dtype=float)


# what `--x budget` (the default) plots, for the caption
BUDGET_AXIS = "each method's own count: stored for CSG and HashedNets, nonzero for pruning, total otherwise"


def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both fewer parameters and higher accuracy."""
    order = sorted(range(len(x)), key=lambda i: (x[i], -y[i]))
    front, best = [], -math.inf
    for i in order:
        if not math.isnan(y[i]) and y[i] > best:
            front.append(i)
            best = y[i]
    return np.array(front, dtype=int)


# -- 1. accuracy vs parameters ----------------------------------------------------------------------
def acc_vs_params(summary: pd.DataFrame, out_dir: Path, x: str = "budget") -> list[Path]:
    """`x`: the parameter count on the axis: a named one (total, stored, nonzero) for every point, or
    "budget", each configuration's own count, the one baselines are matched on."""
    name, col = "acc_vs_params", f"params_{x}"
    title = f"{METRIC_LABEL[HEADLINE]} vs {'parameters' if x == 'budget' else x + ' parameters'}"
    if not summary.empty:
        summary = summary.assign(**{col: plotted_counts(summary, x)})
    data = summary[summary[col].notna() & summary[f"{HEADLINE}_mean"].notna()] if not summary.empty else summary
    if data.empty:
        return placeholder(out_dir, name, title, "no FINISHED run with both a parameter count and an accuracy")
    archs = _archs(data)
    fig, axes = _panels(len(archs))
    seen_methods = []
    for ax, arch in zip(axes.flat, archs):
        d = data[data["arch"] == arch]
        for method in sorted(d["method"].unique(), key=lambda m: (METHOD_ORDER + [m]).index(m)):
            dm = d[d["method"] == method]
            if method not in seen_methods:
                seen_methods.append(method)
            half = dm[f"{HEADLINE}_half_width"].to_numpy(dtype=float)
            one = np.isnan(half)
            xs, ys = dm[col].to_numpy(float), dm[f"{HEADLINE}_mean"].to_numpy(float)
            if (~one).any():
                ax.errorbar(xs[~one], ys[~one], yerr=half[~one], fmt=marker(method), color=color(method),
                            ms=6, capsize=3, lw=1, label=None)
            if one.any():  # a single seed: no interval; drawn hollow
                ax.plot(xs[one], ys[one], marker(method), ms=6, mfc="white", mec=color(method), mew=1.5)
        xs, ys = d[col].to_numpy(float), d[f"{HEADLINE}_mean"].to_numpy(float)
        front = pareto_front(xs, ys)
        if len(front):
            fx, fy = xs[front], ys[front]
            ax.step(fx, fy, where="post", color="black", ls="--", lw=0.9, zorder=0)
            ax.plot(fx, fy, "o", ms=12, mfc="none", mec="black", mew=0.9, zorder=0)
        ax.set_xscale("log")
        log_count_axis(ax.xaxis)
        ax.set_title(panel_title(d, arch))
        counts = "each method's own count" if x == "budget" else x
        ax.set_xlabel(f"parameters ({counts}, log scale)")
        ax.set_ylabel("test accuracy at best val. epoch (%)")
    for ax in list(axes.flat)[len(archs):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], marker=marker(m), color=color(m), ls="", ms=6, label=method_label(m))
               for m in seen_methods]
    handles += [plt.Line2D([], [], marker="o", color="black", mfc="none", ls="--", ms=10, lw=0.9,
                           label="Pareto front"),
                plt.Line2D([], [], marker="o", color="grey", mfc="white", ls="", ms=6,
                           label="1 seed (no interval)")]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), bbox_to_anchor=(0.5, -0.02 - 0.04 *
               math.ceil(len(handles) / 5)), frameon=False)
    fig.suptitle(f"{title}; error bars: 95% CI over seeds")
    fig.tight_layout()
    return save(fig, out_dir, name)


# -- 2. code-dimension sweep ------------------------------------------------------------------------
def code_dim_sweep(summary: pd.DataFrame, out_dir: Path) -> list[Path]:
    name, title = "code_dim_sweep", "CSG: accuracy and parameters vs code dimension (learned vs random-binary)"
    if summary.empty or "code_dim" not in summary:
        return placeholder(out_dir, name, title, "no CSG configuration in this experiment")
    d = summary[(summary["method"] == "csg") & summary["code_dim"].notna()].copy()
    if d.empty:
        return placeholder(out_dir, name, title, "no CSG configuration in this experiment")
    d["code_dim_f"] = d["code_dim"].map(_num)
    for c, default in (("generator", "learned"), ("layout", "contiguous"), ("slice", None), ("policy", "authors")):
        d[c] = d[c].map(lambda v, default=default: default if python_value(v) is None else python_value(v)) \
            if c in d else default
    archs = _archs(d)
    fig, pairs = _paired_panels(len(archs))
    gen_color = {"learned": PALETTE[0], "binary": PALETTE[1]}
    lines = sorted({(str(r["generator"]), _num(r["slice"]), str(r["layout"]), str(r["policy"]))
                    for _, r in d.iterrows()}, key=lambda t: (t[0] != "learned", t))
    slices = sorted({t[1] for t in lines})
    for (top, bottom), arch in zip(pairs, archs):
        da = d[d["arch"] == arch]
        for gen, sl, layout, policy in lines:
            dl = da[(da["generator"].astype(str) == gen) & (da["slice"].map(_num) == sl)
                    & (da["layout"].astype(str) == layout) & (da["policy"].astype(str) == policy)]
            if dl.empty:
                continue
            dl = dl.sort_values("code_dim_f")
            c = gen_color.get(gen, PALETTE[2])
            mk = MARKERS[slices.index(sl) % len(MARKERS)]
            ls = "-" if layout == "contiguous" else ":"
            label = f"{gen}, S{sl:g}" + ("" if layout == "contiguous" else f", {layout}") + \
                ("" if policy == "authors" else f", policy={policy}")
            half = dl[f"{HEADLINE}_half_width"].to_numpy(float)
            top.errorbar(dl["code_dim_f"], dl[f"{HEADLINE}_mean"], yerr=np.nan_to_num(half), color=c,
                                marker=mk, ls=ls, capsize=3, label=label)
            bottom.plot(dl["code_dim_f"], dl["params_stored"], color=c, marker=mk, ls=ls, label=f"{label} stored")
            bottom.plot(dl["code_dim_f"], dl["params_total"], color=c, marker=mk, ls="--", mfc="white", lw=0.8,
                            label=f"{label} total")
        plain = summary[(summary["arch"] == arch) & (summary["method"] == "none")]
        if len(plain):
            p = plain.iloc[0]
            top.axhline(p[f"{HEADLINE}_mean"], color="grey", ls="-.", lw=1, label="plain network")
            bottom.axhline(p["params_total"], color="grey", ls="-.", lw=1, label="plain network")
        top.set_title(panel_title(da, arch))
        top.set_ylabel("test acc. at best val. epoch (%)")
        bottom.set_ylabel("parameters")
        bottom.yaxis.set_major_formatter(mticker.FuncFormatter(_short_count))
        bottom.set_xlabel("code dimension d")
        top.legend(fontsize=7)
        bottom.legend(fontsize=6)
    fig.suptitle(f"{title}\nerror bars: 95% CI over seeds; a random-binary generator is not stored")
    fig.tight_layout()
    return save(fig, out_dir, name)


# -- 3. training curves -----------------------------------------------------------------------------
def mean_curves(wide: pd.DataFrame, groups: set[str]) -> pd.DataFrame:
    """Per group and epoch: mean of val_acc and test_acc over seeds (FINISHED runs only)."""
    w = wide[wide["group"].isin(groups)]
    cols = [c for c in ("val_acc", "test_acc") if c in w]
    if w.empty or not cols:
        return pd.DataFrame(columns=["group", "epoch", "val_acc", "test_acc"])
    return w.groupby(["group", "epoch"], sort=True)[cols].mean().reset_index()


def training_curves(summary: pd.DataFrame, wide: pd.DataFrame, out_dir: Path) -> list[Path]:
    name, title = "training_curves", "Validation and test accuracy per epoch (mean over seeds)"
    curves = mean_curves(wide, set(summary["group"])) if not summary.empty else pd.DataFrame()
    if curves.empty:
        return placeholder(out_dir, name, title, "no per-epoch metrics logged for FINISHED runs")
    archs = [a for a in _archs(summary) if a in set(summary[summary["group"].isin(curves["group"])]["arch"])]
    fig, pairs = _paired_panels(len(archs), size=(4.6, 3.3))
    for (top, bottom), arch in zip(pairs, archs):
        groups = summary[(summary["arch"] == arch) & summary["group"].isin(curves["group"])]
        for k, ((_, g), label) in enumerate(zip(groups.iterrows(), short_labels(groups))):
            c = curves[curves["group"] == g["group"]]
            label += f" (n={g['n']})"
            every = max(1, len(c) // 8)
            for ax, metric in ((top, "val_acc"), (bottom, "test_acc")):
                if metric in c:
                    ax.plot(c["epoch"], c[metric], color=PALETTE[k % len(PALETTE)], marker=marker(g["method"]),
                            markevery=every, ms=4, lw=1.1, ls=["-", "--", "-.", ":"][(k // 10) % 4], label=label)
        top.set_title(panel_title(groups, arch))
        top.set_ylabel("validation accuracy (%)")
        bottom.set_ylabel("test accuracy (%)")
        bottom.set_xlabel("epoch")
        for ax in (top, bottom):
            ax.xaxis.set_major_locator(mticker.MaxNLocator(integer=True))
        top.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    return save(fig, out_dir, name)


def curves_vs_authors(summary: pd.DataFrame, wide: pd.DataFrame, out_dir: Path) -> list[Path]:
    name = "curves_vs_authors"
    title = "Test accuracy over training: ours (mean over seeds) vs the authors' logs (one run)"
    runs, curves = reference.authors_runs(), reference.authors_curves()
    pairs = []
    ours_curves = mean_curves(wide, set(summary["group"])) if not summary.empty else pd.DataFrame()
    for _, r in runs[runs["reuses_generator"] == "no"].iterrows():
        ours = reference.match(summary, r["arch"], r["method"], r["slice"], r["code_dim"])
        if ours is not None and ours["group"] in set(ours_curves.get("group", [])):
            pairs.append((r, ours))
    if not pairs:
        return placeholder(out_dir, name, title, "no configuration in this experiment matches one of the authors' "
                                                 "logged runs (reference/authors_runs.csv)")
    fig, axes = _panels(len(pairs), ncols=3, size=(4.2, 3.2))
    for ax, (r, ours) in zip(axes.flat, pairs):
        a = curves[curves["run"] == r["run"]].sort_values("epoch")
        o = ours_curves[ours_curves["group"] == ours["group"]].sort_values("epoch")
        epochs_ours = _num(ours.get("epochs")) or o["epoch"].max()
        ax.plot(a["epoch"] / a["epoch"].max(), a["test_acc"], color="black", ls="--", lw=1, marker="x",
                markevery=max(1, len(a) // 8), ms=4, label=f"authors {r['run']} ({int(a['epoch'].max())} ep.)")
        ax.plot(o["epoch"] / epochs_ours, o["test_acc"], color=color(ours["method"]), marker=marker(ours["method"]),
                markevery=max(1, len(o) // 8), ms=4, lw=1.3,
                label=f"ours (n={ours['n']}, {int(epochs_ours)} ep.)")
        ax.set_title(f"{r['arch']} {method_label(r['method'])} "
                     + (f"S{int(r['slice'])} d{int(r['code_dim'])}" if r["method"] == "csg" else ""), fontsize=9)
        ax.set_xlabel("fraction of training")
        ax.set_ylabel("test accuracy (%)")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(pairs):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return save(fig, out_dir, name)


# -- 4. paper vs us ---------------------------------------------------------------------------------
def paper_vs_us(table_data: pd.DataFrame, out_dir: Path) -> list[Path]:
    name, title = "paper_vs_us", "The authors' reported accuracy and parameters beside ours"
    if table_data.empty:
        return placeholder(out_dir, name, title, "no configuration in this experiment reproduces one of the "
                                                 "authors' networks (reference/paper_reference.csv)")
    d = table_data.reset_index(drop=True)
    labels = [f"{r['arch']} · {r['config']}" for _, r in d.iterrows()]
    y = np.arange(len(d))[::-1]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 0.55 * len(d) + 1.8), sharey=True)
    specs = [(HEADLINE, "ours: test acc. at best val. epoch", PALETTE[0], "o", -0.2),
             ("best_test_acc", "ours: best test epoch (paper's rule)", PALETTE[1], "s", 0.0)]
    for metric, label, c, mk, off in specs:
        mean = d[f"{metric}_mean"].to_numpy(float)
        half = (d[f"{metric}_ci_high"] - d[f"{metric}_mean"]).to_numpy(float)
        ax1.errorbar(mean, y + off, xerr=np.nan_to_num(half), fmt=mk, color=c, capsize=3, label=label)
    ax1.plot(d["authors_acc"].to_numpy(float), y + 0.2, "D", color=PALETTE[2], mfc="white", mew=1.5,
             label="authors: best test epoch, 1 run")
    ax1.set_yticks(y, labels)
    ax1.set_xlabel("accuracy (%)")
    ax1.legend(fontsize=7, loc="best")
    ax2.barh(y + 0.18, d["our_params_total"], height=0.34, color=PALETTE[0], hatch="//", label="ours (total)")
    ax2.barh(y - 0.18, d["authors_params"], height=0.34, color=PALETTE[2], hatch="..", label="authors")
    # a linear axis from zero: bar lengths must be proportional to the counts
    ax2.xaxis.set_major_formatter(mticker.FuncFormatter(_short_count))
    ax2.set_xlabel("parameters")
    ax2.legend(fontsize=7)
    fig.suptitle(title + "\nerror bars: 95% CI over our seeds")
    fig.tight_layout()
    return save(fig, out_dir, name)


# -- 5. the gap against training length ----------------------------------------------------------------
def _length_axis(ax, lengths: list[int]) -> None:
    """A log2 axis of training lengths, labelled at the lengths drawn (ours and the authors')."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [str(e) for e in lengths])
    ax.xaxis.set_minor_locator(mticker.NullLocator())
    ax.set_xlim(min(lengths) / 1.3, max(lengths) * 1.3)


def gap_vs_length(comp: pd.DataFrame, finished: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Per recipe that ran plain and CSG at two or more lengths: accuracy against length (top) and the
    gap with its line in log2(epochs), extrapolated to the authors' length (bottom)."""
    name, title = "gap_vs_length", "Plain and CSG against training length, and the gap between them"
    series = stats.length_series(comp, finished)
    if not series:
        return placeholder(out_dir, name, title, "no plain network and CSG configuration ran one recipe at two or "
                                                 "more training lengths")
    ref, at = reference.paper_reference(), reference.AUTHORS_EPOCHS
    fig, pairs = _paired_panels(len(series), ncols=3, size=(5.4, 3.5))
    for (top, bottom), rows in zip(pairs, series):
        first = rows.iloc[0]
        lengths = [int(_num(e)) for e in rows["epochs"]]
        trend = stats.gap_trend(rows, finished, at)
        theirs = reference.authors_accuracies(ref, finished[finished["group"] == first["csg_group"]].iloc[0])
        authors = dict(zip(("none", "csg"), theirs or ()))
        # accuracy: each seed a small point, each length's mean a larger one on a line; plain and CSG a
        # little apart on the axis so that their points do not hide each other
        for method, groups, nudge in (("none", rows["group"], 0.96), ("csg", rows["csg_group"], 1.04)):
            runs = finished[finished["group"].isin(set(groups))]
            e = pd.to_numeric(runs["epochs"])
            top.plot(e * nudge, runs[HEADLINE], marker(method), color=color(method), ms=3.5, alpha=0.45, ls="")
            mean = runs.assign(_e=e).groupby("_e")[HEADLINE].mean()
            top.plot(mean.index * nudge, mean.to_numpy(), marker=marker(method), color=color(method), ms=6, lw=1.3,
                     label=f"{method_label(method)} (mean; small: each seed)")
            if method in authors:
                top.plot([at], [authors[method]], marker(method), ms=8, mfc="white", mec=color(method), mew=1.5,
                         label=f"authors' {method_label(method)}, {at} ep. (best test epoch, 1 run)")
        top.set_title(f"{first['arch']}, CSG {first['csg_variant']} and plain")
        top.set_ylabel("test acc. at best val. epoch (%)")
        # the gap: each length's from its own model, the line from the trend model; the line is solid over
        # the lengths we ran and dashed where it extrapolates
        gap = rows["diff_vs_csg"].to_numpy(float)
        lo, hi = rows["diff_ci_low"].to_numpy(float), rows["diff_ci_high"].to_numpy(float)
        has, x = ~np.isnan(lo), np.array(lengths, dtype=float)
        if has.any():
            bottom.errorbar(x[has], gap[has], yerr=[gap[has] - lo[has], hi[has] - gap[has]], fmt="o", color="black",
                            capsize=3, ms=5, label="plain − CSG at each length (simultaneous 95% CI)")
        if (~has).any():
            bottom.plot(x[~has], gap[~has], "o", color="black", mfc="white", ms=5,
                        label="plain − CSG at a length without an interval")
        if trend.fit is not None:
            xs = np.geomspace(min(lengths), at, 60)
            fitted, band_lo, band_hi = trend.gap(xs)
            inside = xs <= max(lengths)
            m = trend.FAMILY
            level = 100 * (1 - (1 - stats.CONFIDENCE) / m)
            bottom.fill_between(xs, band_lo, band_hi, color=PALETTE[0], alpha=0.2, lw=0,
                                label=f"line's {level:g}% interval at each length (Bonferroni over {m})")
            bottom.plot(xs[inside], fitted[inside], color=PALETTE[0], lw=1.5, label="line in log2(epochs)")
            bottom.plot(xs[~inside], fitted[~inside], color=PALETTE[0], lw=1.5, ls="--", label="extrapolated")
        if theirs is not None:
            bottom.plot([at], [theirs[0] - theirs[1]], "D", color=PALETTE[3], ms=7, label=f"authors' gap, {at} ep.")
        bottom.axhline(0, color="grey", lw=0.8)
        bottom.set_ylabel("plain − CSG (points)")
        bottom.set_xlabel("training length (epochs, log scale)")
        for ax in (top, bottom):
            _length_axis(ax, sorted(set(lengths)) + [at])
    fig.suptitle(title)
    fig.tight_layout()
    # one legend under the panels (in the axes it would hide the intervals): accuracy on the left, the gap
    # on the right, each entry once
    columns = []
    for axes in ([t for t, _ in pairs], [b for _, b in pairs]):
        entries = {}
        for ax in axes:
            entries.update({label: h for h, label in zip(*ax.get_legend_handles_labels()) if label not in entries})
        columns.append(entries)
    height = max(len(c) for c in columns)
    padded = [list(c.items()) + [(" ", plt.Line2D([], [], ls=""))] * (height - len(c)) for c in columns]
    items = [item for column in padded for item in column]
    fig.legend([h for _, h in items], [label for label, _ in items], ncol=2, fontsize=7.5, frameon=False,
               loc="upper center", bbox_to_anchor=(0.5, 0.0))
    return save(fig, out_dir, name)


# -- 6. parameter breakdown -------------------------------------------------------------------------
def param_breakdown(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    from analysis.breakdown import CATEGORIES

    name, title = "param_breakdown", "Where the parameters go (unique parameters by role)"
    if frame.empty:
        return placeholder(out_dir, name, title, "no configuration could be rebuilt (see the report's notes)")
    d = frame.reset_index(drop=True)
    labels = [f"{arch} · {label}" for arch, label in zip(d["arch"], short_labels(d))]
    y = np.arange(len(d))[::-1]
    fig, ax = plt.subplots(figsize=(10, 0.42 * len(d) + 1.8))
    left = np.zeros(len(d))
    hatches = ["", "--", "//", "..", "xx", "\\\\", "oo"]
    for i, c in enumerate(CATEGORIES):
        v = d[c].to_numpy(float)
        ax.barh(y, v, left=left, color=PALETTE[i], hatch=hatches[i], edgecolor="black", lw=0.3, label=c)
        left += v
    ax.set_yticks(y, labels)
    ax.set_xlabel("parameters")
    ax.xaxis.set_major_formatter(mticker.FuncFormatter(_short_count))
    ax.legend(fontsize=7, ncol=3, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    ax.set_title(title, pad=40)
    fig.tight_layout()
    return save(fig, out_dir, name)


def at_longest(summary: pd.DataFrame) -> pd.DataFrame:
    """Each architecture's configurations at its longest training length.

    The figures that set configurations side by side compare them at one training budget: points at 10
    and 40 epochs on one axis would read as different methods.  The shorter runs are in `gap_vs_length`
    and in the report's tables."""
    if summary.empty or "epochs" not in summary:
        return summary
    epochs = pd.to_numeric(summary["epochs"], errors="coerce")
    longest = epochs.groupby(summary["arch"]).transform("max")
    return summary[(epochs == longest) | longest.isna()]


def all_figures(summary, wide, paper_table_data, breakdown_frame, out_dir: Path, x: str = "budget",
                curves: bool = True, comp: pd.DataFrame | None = None,
                finished: pd.DataFrame | None = None) -> list[Path]:
    """Every figure; `curves=False` leaves out (and leaves as they are) the ones drawn from per-epoch metrics.
    `comp` and `finished`: the method comparison and the runs it came from, for the gap against length."""
    _style()
    paths = []
    summary = at_longest(summary)
    if finished is not None and len(summary):
        summary = summary.assign(recipe=summary["group"].map(stats.recipes(finished)).fillna(""))
    paths += acc_vs_params(summary, out_dir, x)
    paths += code_dim_sweep(summary, out_dir)
    if curves:
        paths += training_curves(summary, wide, out_dir)
        paths += curves_vs_authors(summary, wide, out_dir)
    paths += paper_vs_us(paper_table_data, out_dir)
    paths += gap_vs_length(pd.DataFrame() if comp is None else comp,
                           pd.DataFrame() if finished is None else finished, out_dir)
    paths += param_breakdown(breakdown_frame, out_dir)
    return paths
