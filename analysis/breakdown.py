"""Where each configuration's parameters go: generator, codes, ordinary convs, classifier, norms, other.

Read from the runs, never rebuilt: the runner counts the network as training ends it
(`study.accounting.breakdown`) when a run starts and logs it as the metrics
`study.schema.BREAKDOWN_METRICS`; `python -m study backfill-metadata` adds them to older runs and
manifests.  A configuration whose runs carry no breakdown is named, never guessed.
"""
from __future__ import annotations

import json

import pandas as pd

from analysis.load import python_value
from study.schema import BREAKDOWN, BREAKDOWN_TOTAL, CATEGORIES, literal

COLUMNS = ["arch", "method", "variant", *CATEGORIES, "total", "logged_total"]


def breakdown(summary: pd.DataFrame, finished: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One row per distinct (arch, method, method arguments) among the configurations."""
    rows, skipped, done = [], [], set()
    if summary.empty:
        return pd.DataFrame(columns=COLUMNS), skipped
    first = finished.drop_duplicates("group").set_index("group")
    for _, s in summary.iterrows():
        run = first.loc[s["group"]]
        keys = json.loads(run["method_args"])
        args = {k: literal(python_value(run[k])) for k in keys}
        args = {k: v for k, v in args.items() if v is not None}
        ident = (s["arch"], s["method"], json.dumps(args, sort_keys=True, default=str))
        if ident in done:
            continue
        done.add(ident)
        counts = {c: python_value(run.get(BREAKDOWN[c])) for c in CATEGORIES}
        if any(v is None for v in counts.values()):
            skipped.append(f"{s['arch']} {s['method']} {s['variant']}: its runs logged no parameter breakdown "
                           f"(`python -m study backfill-metadata` adds it)")
            continue
        counts = {c: int(v) for c, v in counts.items()}
        total = python_value(run.get(BREAKDOWN_TOTAL))
        rows.append({"arch": s["arch"], "method": s["method"], "variant": s["variant"], **counts,
                     "total": int(total) if total is not None else sum(counts.values()),  # python_value: NaN is None
                     "logged_total": s["params_total"]})
    return pd.DataFrame(rows, columns=COLUMNS), skipped
