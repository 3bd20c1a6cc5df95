"""The authors' reported numbers (committed under `reference/`) and their matching with our configurations."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from analysis.load import REPO

REFERENCE_DIR = REPO / "reference"


def paper_reference(path: Path | None = None) -> pd.DataFrame:
    ref = pd.read_csv(path or REFERENCE_DIR / "paper_reference.csv", dtype={"source": str, "metric": str})
    for c in ("slice", "code_dim", "params"):
        ref[c] = pd.to_numeric(ref[c], errors="coerce")
    return ref


def authors_runs(path: Path | None = None) -> pd.DataFrame:
    runs = pd.read_csv(path or REFERENCE_DIR / "authors_runs.csv", dtype={"note": str}).fillna({"note": ""})
    for c in ("slice", "code_dim"):
        runs[c] = pd.to_numeric(runs[c], errors="coerce")
    return runs


def authors_curves(path: Path | None = None) -> pd.DataFrame:
    return pd.read_csv(path or REFERENCE_DIR / "authors_curves.csv")


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def match(summary: pd.DataFrame, arch: str, method: str, slice_=None, code_dim=None) -> pd.Series | None:
    """Our configuration that reproduces one of the authors' networks, or None.

    CSG must have the same slice and code dimension, a learned generator and the authors' conversion
    policy (either layout: both have the same parameter count).  Among several candidates the
    contiguous layout, then the most seeds, then the first in table order wins.
    """
    if summary.empty:
        return None
    cand = summary[(summary["arch"] == arch) & (summary["method"] == method)]
    if method == "csg":
        if "slice" not in cand or "code_dim" not in cand:
            return None
        cand = cand[(cand["slice"].map(_num) == _num(slice_)) & (cand["code_dim"].map(_num) == _num(code_dim))]
        if "generator" in cand:
            cand = cand[cand["generator"].fillna("learned").astype(str) == "learned"]
        if "policy" in cand:
            cand = cand[cand["policy"].fillna("authors").astype(str) == "authors"]
    if cand.empty:
        return None
    cand = cand.assign(_contig=(cand["layout"].fillna("contiguous").astype(str) != "contiguous")
                       if "layout" in cand else False, _order=range(len(cand)))
    cand = cand.sort_values(["_contig", "n", "_order"], ascending=[True, False, True])
    return cand.iloc[0]
