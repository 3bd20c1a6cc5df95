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


def _fmt_epochs(values) -> str:
    vals = sorted({int(v) for v in values if v is not None and not math.isnan(v)})
    return " and ".join(str(v) for v in vals) if vals else "an unknown number of"


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
            ols = smf.ols(FORMULA, data=self.data)
            self.df_resid = int(len(self.data) - np.linalg.matrix_rank(ols.exog))
            if self.df_resid >= 1:
                with warnings.catch_warnings():
                    # a rank-deficient design is expected: over training lengths by construction (each length
                    # is its own set of blocks), and wherever configurations share no seed; `estimable`
                    # decides for each contrast whether the data determine it
                    warnings.simplefilter("ignore", SingularMatrixWarning)
                    self.fit = ols.fit()
                # the row space of the design: a contrast is estimable iff its vector lies in it
                self._rowspace = np.linalg.pinv(ols.exog) @ ols.exog
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
                self.over_lengths.append(Model(g, metric, blocks, f"{where} over {_fmt_epochs(lengths)} epochs",
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
            res = {"label": w.label, "model": model.label if model else "", "epochs": model.epochs if model else [],
                   "estimate": math.nan, "se": math.nan, "df": math.nan, "p": math.nan, "p_adj": math.nan, "m": 0,
                   "ci_low": math.nan, "ci_high": math.nan, "resolved": False, "reason": ""}
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
            m = len(items)
            tests = [model.fit.t_test(L) for _, L in items]
            p = np.array([float(np.squeeze(t.pvalue)) for t in tests])
            p_adj = multipletests(p, alpha=1 - CONFIDENCE, method="bonferroni")[1]
            for (i, _), t, pi, qi in zip(items, tests, p, p_adj):
                lo, hi = t.conf_int(alpha=(1 - CONFIDENCE) / m)[0]
                results[i].update(estimate=float(np.squeeze(t.effect)), se=float(np.squeeze(t.sd)),
                                  df=float(model.df_resid), p=float(pi), p_adj=float(qi), m=m,
                                  ci_low=float(lo), ci_high=float(hi), resolved=bool(lo > 0 or hi < 0))
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
