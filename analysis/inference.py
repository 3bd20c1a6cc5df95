"""One inference model for every contrast: accuracy ~ C(config) + C(seed), fitted with statsmodels.

The seed is a block: it fixes the validation split, the data order and the initialisation for every
method, so runs that share a seed share part of their luck.  One OLS model is fitted per experiment,
architecture and training length (no contrast crosses architectures, and a seed's initialisation is
architecture-specific).  Every contrast the report states is a `t_test` on that model, and each
family of contrasts gets simultaneous intervals: Bonferroni, each interval at level 1 - 0.05/m for
the m contrasts of the family that have one, with `multipletests` giving the matching adjusted
p-values.  A difference is *resolved* only when its adjusted interval excludes zero.

- A configuration that ran one seed still enters: the model reads that seed's effect off the
  configurations that ran it, and its contrasts get the wider intervals that one run warrants.
- Where a model has no residual degrees of freedom (no configuration ran two seeds), or the
  configurations of a contrast are not linked through shared seeds (not estimable), there is no
  interval.
- How a gap changes with the training length comes from one model over every training length of
  the experiment and architecture, with one block per (training length, seed).
- `GapTrend`: the plain − CSG gap as a line in log2(epochs), from one model over the plain and CSG
  runs of one recipe at several lengths, with its slope and the gap it extrapolates to.
- `Model.spread` is the diagnostic for the pooled model's one-variance assumption (Brown–Forsythe).
- `spearman` gives an exact permutation p-value for small samples.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.tools.sm_exceptions import SingularMatrixWarning

CONFIDENCE = 0.95
FORMULA = "y ~ C(config) + C(seed)"
# each (training length, seed) block its own level; CSG's offset from plain a line in log2(epochs)
TREND_FORMULA = "y ~ C(block) + is_csg + is_csg:log2_epochs"
SPREAD_ALPHA = 0.05     # the Brown–Forsythe test flags unequal spread below this p
EXACT_MAX_N = 8         # Spearman: every ordering up to 8! = 40,320; seeded resampling above


@dataclass(frozen=True)
class Wanted:
    """One contrast: a weight per configuration (group); the weights sum to zero."""
    label: str
    weights: tuple[tuple[str, float], ...]

    @property
    def configs(self) -> set[str]:
        return {c for c, _ in self.weights}


def difference(a: str, b: str, label: str = "") -> Wanted:
    """mean(a) − mean(b)."""
    return Wanted(label, ((a, 1.0), (b, -1.0)))


def gap_change(a_long: str, b_long: str, a_short: str, b_short: str, label: str = "") -> Wanted:
    """(a − b) at the longer training length minus (a − b) at the shorter one."""
    return Wanted(label, ((a_long, 1.0), (b_long, -1.0), (a_short, -1.0), (b_short, 1.0)))


def training_length(frame: pd.DataFrame) -> pd.Series:
    """Each run's configured epochs (`epochs_completed` where the config's `epochs` is not there)."""
    for col in ("epochs", "epochs_completed"):
        if col in frame and frame[col].notna().any():
            return pd.to_numeric(frame[col], errors="coerce")
    return pd.Series(np.nan, index=frame.index)


def fmt_epochs(values) -> str:
    vals = [str(v) for v in sorted({int(v) for v in values if v is not None and not math.isnan(v)})]
    if not vals:
        return "an unknown number of"
    return vals[0] if len(vals) == 1 else ", ".join(vals[:-1]) + " and " + vals[-1]


def _design(formula: str, data: pd.DataFrame):
    """The OLS model of `formula` on `data`, its residual degrees of freedom, and its fit where it has some."""
    ols = smf.ols(formula, data=data)
    df_resid = int(len(data) - np.linalg.matrix_rank(ols.exog))
    fit = None
    if df_resid >= 1:
        with warnings.catch_warnings():
            # a rank-deficient design is expected: over training lengths by construction (each length
            # is its own set of blocks), and wherever configurations share no seed; estimability is
            # decided for each contrast (`_rowspace`)
            warnings.simplefilter("ignore", SingularMatrixWarning)
            fit = ols.fit()
    return ols, df_resid, fit


def _rowspace(ols) -> np.ndarray:
    """The projection onto the row space of the design: a contrast is estimable iff its vector lies in it."""
    return np.linalg.pinv(ols.exog) @ ols.exog


def settled(x) -> float:
    """`x` rounded to 1e-9 points.  A difference of two-decimal accuracies can sit exactly on a rounding
    tie (+2.105), where the last bit of the least-squares arithmetic, which differs between CPUs, would
    print +2.10 on one machine and +2.11 on another; rounding off that noise first prints it alike."""
    return round(float(x), 9)


def simultaneous(fit, vectors: list[np.ndarray], df_resid: int) -> list[dict]:
    """A `t_test` of each contrast vector on `fit`, with Bonferroni-simultaneous intervals over all of them."""
    m = len(vectors)
    tests = [fit.t_test(L) for L in vectors]
    p = np.array([float(np.squeeze(t.pvalue)) for t in tests])
    p_adj = multipletests(p, alpha=1 - CONFIDENCE, method="bonferroni")[1]
    out = []
    for t, pi, qi in zip(tests, p, p_adj):
        lo, hi = (settled(x) for x in t.conf_int(alpha=(1 - CONFIDENCE) / m)[0])
        out.append(dict(estimate=settled(np.squeeze(t.effect)), se=float(np.squeeze(t.sd)), df=float(df_resid),
                        p=float(pi), p_adj=float(qi), m=m, ci_low=lo, ci_high=hi,
                        resolved=bool(lo > 0 or hi < 0)))
    return out


def no_result(label: str, model: str, epochs: list, reason: str = "", estimate: float = math.nan) -> dict:
    """A contrast's result before (or without) an interval."""
    return {"label": label, "model": model, "epochs": epochs, "estimate": estimate, "se": math.nan, "df": math.nan,
            "p": math.nan, "p_adj": math.nan, "m": 0, "ci_low": math.nan, "ci_high": math.nan, "resolved": False,
            "reason": reason}


class Model:
    """accuracy ~ C(config) + C(seed) by OLS on one set of runs (`blocks` names each run's seed block)."""

    def __init__(self, runs: pd.DataFrame, metric: str, blocks: pd.Series, label: str, epochs: list):
        self.label, self.epochs = label, epochs
        self.data = pd.DataFrame({
            "y": pd.to_numeric(runs[metric], errors="coerce").to_numpy(float),
            "config": runs["group"].astype(str).to_numpy(),
            "seed": blocks.astype(str).to_numpy(),
            "method": runs["method"].astype(str).to_numpy(),
        }).dropna(subset=["y"]).reset_index(drop=True)
        self.configs = set(self.data["config"])
        self.fit, self.df_resid = None, 0
        self.reason = "no finished run has this metric"
        if len(self.data):
            ols, self.df_resid, self.fit = _design(FORMULA, self.data)
            if self.fit is not None:
                self._rowspace = _rowspace(ols)
            else:
                self.reason = (f"the model for {label} has no residual degrees of freedom: {len(self.data)} runs "
                               f"for {len(self.data) - self.df_resid} parameters, one per configuration and seed")

    @property
    def sigma(self) -> float:
        return math.sqrt(self.fit.mse_resid) if self.fit is not None else math.nan

    def vector(self, wanted: Wanted) -> np.ndarray:
        names = self.fit.model.exog_names
        L = np.zeros(len(names))
        for config, w in wanted.weights:
            # Treatment coding: the reference configuration has no column, its effect is the
            # intercept's, which cancels because the weights sum to zero
            name = f"C(config)[T.{config}]"
            if name in names:
                L[names.index(name)] += w
        return L

    def estimable(self, L: np.ndarray) -> bool:
        return bool(np.allclose(L @ self._rowspace, L, atol=1e-8))

    def spread(self) -> dict:
        """Residual spread by method, and whether it differs (Brown–Forsythe: Levene's test about the median).

        Only configurations with two or more seeds have residuals that show noise (a one-seed
        configuration's residual is zero by construction).  A method enters the test when those
        configurations give it at least two residual degrees of freedom (k seeds give k − 1).
        """
        out = {"rms": {}, "tested": [], "statistic": math.nan, "p": math.nan, "flag": False}
        if self.fit is None:
            return out
        data = self.data.assign(resid=self.fit.resid.to_numpy())
        seeds = data.groupby("config")["y"].transform("size")
        data = data[seeds >= 2]
        groups = {}
        for method, g in data.groupby("method", sort=True):
            out["rms"][method] = float(np.sqrt((g["resid"] ** 2).mean()))
            if len(g) - g["config"].nunique() >= 2:
                groups[method] = g["resid"].to_numpy()
        out["tested"] = sorted(groups)
        if len(groups) >= 2:
            res = sps.levene(*groups.values(), center="median")
            out["statistic"], out["p"] = float(res.statistic), float(res.pvalue)
            out["flag"] = bool(out["p"] < SPREAD_ALPHA)
        return out


class Models:
    """The fitted models of a set of FINISHED runs for one accuracy metric, and their contrasts."""

    def __init__(self, finished: pd.DataFrame, metric: str):
        self.metric = metric
        runs = finished.assign(_epochs=training_length(finished).to_numpy(),
                               _experiment=finished["experiment"].astype(str) if "experiment" in finished else "",
                               _arch=finished["arch"].astype(str) if "arch" in finished else "")
        several = runs["_experiment"].nunique() > 1
        self.per_length: list[Model] = []
        self.over_lengths: list[Model] = []
        for (exp, arch), g in runs.groupby(["_experiment", "_arch"], sort=True):
            where = f"{arch}" + (f" ({exp})" if several else "")
            lengths = sorted(g["_epochs"].dropna().unique())
            for e in lengths:
                at = g[g["_epochs"] == e]
                self.per_length.append(Model(at, metric, at["seed"], f"{where} at {int(e)} epochs", [int(e)]))
            if len(lengths) >= 2:  # a block per (training length, seed): the seeds' luck is not shared across lengths
                blocks = g["_epochs"].astype("Int64").astype(str) + ":" + g["seed"].astype(str)
                self.over_lengths.append(Model(g, metric, blocks, f"{where} over {fmt_epochs(lengths)} epochs",
                                               [int(e) for e in lengths]))

    def model_for(self, wanted: Wanted) -> Model | None:
        """The model at one training length holding every configuration, else the one over lengths."""
        for m in self.per_length + self.over_lengths:
            if wanted.configs <= m.configs:
                return m
        return None

    def family(self, wanted: list[Wanted]) -> list[dict]:
        """One result per wanted contrast, with simultaneous (Bonferroni) intervals per model.

        A family is the list passed in; the contrasts of one model share its Bonferroni factor m, the
        number of them that have an interval.
        """
        results, tested = [], {}
        for w in wanted:
            model = self.model_for(w)
            res = no_result(w.label, model.label if model else "", model.epochs if model else [])
            if model is None:
                res["reason"] = "the configurations were not run in one experiment on one architecture"
            elif model.fit is None:
                res["reason"] = model.reason
            else:
                L = model.vector(w)
                if not model.estimable(L):
                    res["reason"] = "not estimable: the configurations share no seed, directly or through others"
                else:
                    tested.setdefault(id(model), (model, []))[1].append((len(results), L))
            res["estimate"] = self._difference_of_means(w)  # replaced by the model's estimate where it has one
            results.append(res)
        for model, items in tested.values():
            for (i, _), res in zip(items, simultaneous(model.fit, [L for _, L in items], model.df_resid)):
                results[i].update(res)
        return results

    def _difference_of_means(self, wanted: Wanted) -> float:
        """Where there is no model estimate: the weighted difference of the configurations' means."""
        total = 0.0
        for config, w in wanted.weights:
            vals = [m.data.loc[m.data["config"] == config, "y"] for m in self.per_length if config in m.configs]
            if not vals:
                return math.nan
            total += w * float(vals[0].mean())
        return total


class GapTrend:
    """The plain − CSG gap as a line in log2(epochs): one model over the plain and CSG runs of one recipe
    linked across training lengths, `TREND_FORMULA`.

    A block per (training length, seed) leaves each length's level free (and each seed's luck at it,
    as the per-length models do); CSG's offset from plain is β_csg + β_slope · log2(epochs), so the
    gap at e epochs is −(β_csg + β_slope · log2 e).  Its family of two contrasts, with Bonferroni
    intervals (m = 2): `slope`, the gap's change per doubling of the epochs (−β_slope), and `gap_at`,
    the gap extrapolated to `at` epochs.  With two lengths the line runs through both gaps, so the residual
    degrees of freedom are the seeds' alone and the line's straightness is not tested; without residual
    degrees of freedom (one seed per length at two lengths) the estimates come without an interval.
    """

    def __init__(self, runs: pd.DataFrame, metric: str, label: str, at: float):
        self.label, self.at = label, at
        epochs = training_length(runs)
        self.data = pd.DataFrame({
            "y": pd.to_numeric(runs[metric], errors="coerce").to_numpy(float),
            "is_csg": (runs["method"] == "csg").to_numpy(float),
            "epochs": epochs.to_numpy(float),
            "log2_epochs": np.log2(epochs.to_numpy(float)),
            "block": (epochs.astype("Int64").astype(str) + ":" + runs["seed"].astype(str)).to_numpy(),
        }).dropna(subset=["y", "epochs"]).reset_index(drop=True)
        self.epochs = sorted({int(e) for e in self.data["epochs"]})
        self.fit, self.df_resid = None, 0
        results = [no_result("gap change per doubling of the epochs", label, self.epochs),
                   no_result(f"gap at {at:g} epochs", label, self.epochs)]
        if len(self.data) == 0:
            reason = "no finished run has this metric"
        else:
            ols, self.df_resid, self.fit = _design(TREND_FORMULA, self.data)
            self._names = ols.exog_names
            vectors = [self.vector(None), self.vector(at)]
            pinv = np.linalg.pinv(ols.exog)
            if not all(np.allclose(L @ pinv @ ols.exog, L, atol=1e-8) for L in vectors):
                reason = "not estimable: plain and CSG do not share a seed at two or more training lengths"
            elif self.fit is None:
                reason = (f"the trend model for {label} has no residual degrees of freedom: {len(self.data)} runs for "
                          f"{len(self.data) - self.df_resid} parameters (a level per training length and seed, the "
                          f"gap and its slope)")
                for res, L in zip(results, vectors):  # the exact fit still gives the estimates
                    res["estimate"] = float(L @ pinv @ ols.endog)
            else:
                reason = ""
                for res, r in zip(results, simultaneous(self.fit, vectors, self.df_resid)):
                    res.update(r)
        for res in results:
            res["reason"] = reason
        self.slope, self.gap_at = results

    def vector(self, epochs: float | None) -> np.ndarray:
        """The contrast vector of the gap at `epochs`, or of its change per doubling (`epochs` None)."""
        L = np.zeros(len(self._names))
        L[self._names.index("is_csg:log2_epochs")] = -1.0 if epochs is None else -math.log2(epochs)
        if epochs is not None:
            L[self._names.index("is_csg")] = -1.0
        return L

    FAMILY = 2  # the slope and the gap at `at`

    @property
    def sigma(self) -> float:
        return math.sqrt(self.fit.mse_resid) if self.fit is not None else math.nan

    def gap(self, epochs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The fitted gap at each of `epochs` and its interval at the family's level (Bonferroni over two).

        For drawing the line and its band: at `at` epochs this is the interval `gap_at` states."""
        t = self.fit.t_test(np.array([self.vector(e) for e in np.atleast_1d(epochs)]))
        ci = t.conf_int(alpha=(1 - CONFIDENCE) / self.FAMILY)
        return np.ravel(t.effect), ci[:, 0], ci[:, 1]


def spearman(x, y, resamples: int = 9999) -> dict:
    """Spearman's ρ with a two-sided permutation p-value: exact (every ordering) up to EXACT_MAX_N points.

    With n points the smallest exact p is 2/n! (the two orderings with |ρ| = 1): 2/120 = 0.0167 for
    n = 5.  Above EXACT_MAX_N points, `resamples` random orderings with a fixed seed (reruns agree).
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(x)
    out = {"rho": math.nan, "p": math.nan, "n": n, "exact": n <= EXACT_MAX_N}
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    res = sps.permutation_test((y,), lambda yy: sps.spearmanr(x, yy).statistic, permutation_type="pairings",
                               n_resamples=np.inf if out["exact"] else resamples, rng=np.random.default_rng(0))
    out.update(rho=float(res.statistic), p=float(res.pvalue))
    return out
