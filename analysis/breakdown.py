"""Where each configuration's parameters go: generator, codes, ordinary convs, classifier, norms, other.

Models are rebuilt with `study.methods.build` from the arguments a run logged (the knob as logged;
if the rebuilt count differs from the logged one and the run had a numeric target, the target is
searched again), then brought to the structure they end training with (a method that reshapes the
network part-way, like filter pruning, does so at its last epoch).  A configuration whose method or
architecture cannot be built here is skipped and named, never guessed.
"""
from __future__ import annotations

import ast
import json
import math

import pandas as pd

from analysis.load import python_value

CATEGORIES = ["generator", "generator (frozen, not stored)", "codes", "convolutions (not generated)", "classifier", "normalisation", "other"]


def classify(model) -> dict[str, int]:
    """Unique parameters of `model` by role."""
    import torch.nn as nn
    from study.csg import GeneratedConv2d, SliceGenerator

    modules = list(model.named_modules())
    linears = [n for n, m in modules if isinstance(m, nn.Linear)]
    convs = [n for n, m in modules if isinstance(m, nn.Conv2d) and any(True for _ in m.parameters(recurse=False))]
    classifier = linears[-1] if linears else (convs[-1] if convs else None)
    norms = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
    out = dict.fromkeys(CATEGORIES, 0)
    seen: set[int] = set()
    for name, module in modules:
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            if isinstance(module, SliceGenerator):
                cat = "generator" if p.requires_grad else "generator (frozen, not stored)"
            elif isinstance(module, GeneratedConv2d):
                cat = "codes" if pname == "code" else "other"
            elif name == classifier:
                cat = "classifier"
            elif isinstance(module, norms):
                cat = "normalisation"
            elif isinstance(module, nn.Conv2d) or p.dim() == 4:
                cat = "convolutions (not generated)"
            else:
                cat = "other"
            out[cat] += p.numel()
    return out


def breakdown(summary: pd.DataFrame, finished: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One row per distinct (arch, method, method arguments) among the configurations."""
    rows, skipped, done = [], [], set()
    if summary.empty:
        return pd.DataFrame(columns=["arch", "method", "variant", *CATEGORIES, "total", "logged_total"]), skipped
    try:
        import torch
        from study.methods import build
    except Exception as e:  # the training code is not importable here
        return (pd.DataFrame(columns=["arch", "method", "variant", *CATEGORIES, "total", "logged_total"]),
                [f"every configuration (cannot import study.methods: {type(e).__name__}: {e})"])
    first = finished.drop_duplicates("group").set_index("group")
    for _, s in summary.iterrows():
        run = first.loc[s["group"]]
        keys = json.loads(run["method_args"])
        args = {k: _literal(python_value(run[k])) for k in keys}
        args = {k: v for k, v in args.items() if v is not None}
        ident = (s["arch"], s["method"], json.dumps(args, sort_keys=True, default=str))
        if ident in done:
            continue
        done.add(ident)
        label = f"{s['arch']} {s['method']} {s['variant']}"
        try:
            torch.manual_seed(0)
            epochs = int(python_value(run.get("epochs")) or 1)
            seed = int(python_value(run.get("seed")) or 0)
            model = _build(build, s["arch"], s["method"], args, epochs, seed=seed)
            counts = classify(model)
            target = python_value(s.get("target_params"))
            logged = s["params_total"]
            if (not math.isnan(logged) and sum(counts.values()) != round(logged)
                    and isinstance(target, (int, float)) and not isinstance(target, bool)):
                model = _build(build, s["arch"], s["method"], args, epochs, seed=seed, target_params=int(target))
                counts = classify(model)
            del model
        except Exception as e:
            skipped.append(f"{label}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": "))
            continue
        total = sum(counts.values())
        rows.append({"arch": s["arch"], "method": s["method"], "variant": s["variant"], **counts, "total": total,
                     "logged_total": s["params_total"]})
    return pd.DataFrame(rows, columns=["arch", "method", "variant", *CATEGORIES, "total", "logged_total"]), skipped


def _literal(v):
    """MLflow logs a list argument as its repr ('[2, 4, 3]'); read it back as the list."""
    if isinstance(v, str) and v.startswith(("[", "{", "(")):
        try:
            return ast.literal_eval(v)
        except (ValueError, SyntaxError):
            return v
    return v


def _build(build, arch: str, method: str, args: dict, epochs: int, seed: int = 0, target_params: int | None = None):
    """`study.methods.build`, then the method's change of structure at the last epoch (if it makes one)."""
    from study.methods import get_method

    model, margs = build(arch, method, args, seed=seed, target_params=target_params)
    return get_method(method).on_epoch_start(model, margs, epochs - 1, epochs)
