"""The authors' reported numbers (committed under `reference/`) and their matching with our configurations."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from analysis.load import REPO

REFERENCE_DIR = REPO / "reference"

# the authors' CIFAR protocol (read from their released training code; reference/README.md): their
# training length (their ResNet logs in authors_curves.csv run 200 epochs, the DenseNet ones a few more),
# and the settings to say where ours departs from it
AUTHORS_EPOCHS = 200
AUTHORS_PROTOCOL = {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "step", "gamma": 0.1,
                    "milestones": "0.5,0.75", "label_smoothing": 0.0, "nesterov": False}
AUTHORS_BATCH = {"densenet": 128, "resnet": 192}


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


# the only CSG networks the authors trained: their contiguous kernel layout (the one their checkpoints
# load in), a learned generator and their choice of converted layers; a run that leaves one out used the default
AUTHORS_CSG = {"layout": "contiguous", "generator": "learned", "policy": "authors"}


def csg_arg(row, key: str):
    """A CSG configuration's `layout`, `generator` or `policy`, the default where the run did not set it."""
    v = row.get(key) if hasattr(row, "get") else None
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA or v == "":
        return AUTHORS_CSG[key]
    return str(v)


def authors_row(ref: pd.DataFrame, row) -> pd.Series | None:
    """The authors' reported network that our configuration `row` reproduces, or None.

    Plain: same architecture.  CSG: same architecture, slice and code dimension, and the authors'
    layout, generator and policy (`AUTHORS_CSG`), so a block-layout or random-binary run is never
    set beside their numbers.
    """
    method = row.get("method")
    cand = ref[(ref["arch"] == row.get("arch")) & (ref["method"] == method)]
    if method == "csg":
        if any(csg_arg(row, k) != v for k, v in AUTHORS_CSG.items()):
            return None
        cand = cand[(cand["slice"] == _num(row.get("slice"))) & (cand["code_dim"] == _num(row.get("code_dim")))]
    elif method != "none":
        return None
    return cand.iloc[0] if len(cand) else None


def authors_accuracies(ref: pd.DataFrame, csg_row) -> tuple[float, float] | None:
    """The authors' plain and CSG accuracy for the network the CSG configuration `csg_row` reproduces
    (`authors_row`), or None where they reported no accuracy for either."""
    rows = [authors_row(ref, {"arch": csg_row.get("arch"), "method": "none"}), authors_row(ref, csg_row)]
    if any(r is None or math.isnan(_num(r["accuracy"])) for r in rows):
        return None
    return float(rows[0]["accuracy"]), float(rows[1]["accuracy"])


def match(summary: pd.DataFrame, arch: str, method: str, slice_=None, code_dim=None) -> pd.Series | None:
    """Our configuration that reproduces the authors' network (arch, method, slice, code dim), or None.

    The same rule as `authors_row`: for CSG the authors' layout, generator and policy as well.  Among
    several candidates the longest training length (the headline's, for plain and CSG alike), then the
    most seeds, then the first in table order, wins.
    """
    if summary.empty:
        return None
    one = pd.DataFrame([{"arch": arch, "method": method, "slice": _num(slice_), "code_dim": _num(code_dim)}])
    cand = summary[(summary["arch"] == arch) & (summary["method"] == method)]
    cand = cand.loc[[i for i, r in cand.iterrows() if authors_row(one, r) is not None]]
    if cand.empty:
        return None
    epochs = pd.to_numeric(cand["epochs"], errors="coerce") if "epochs" in cand else math.nan
    cand = cand.assign(_e=epochs, _order=range(len(cand))).sort_values(["_e", "n", "_order"],
                                                                        ascending=[False, False, True])
    return cand.iloc[0]
