"""Synthetic runs with the training code's schema, for tests and for trying the analysis.

    python -c "from analysis.synthetic import make_store; print(make_store('/tmp/demo'))"

- `make_store`: an MLflow store, logged through the real MLflow client.  Accuracies are made up (a
  deterministic function of the run name); parameter counts are the true ones for the CIFAR ResNets.
  Besides FINISHED runs the store holds a FAILED, a KILLED and a RUNNING run, and one
  configuration+seed that finished twice.
- `make_lengths_store`: the same for the converged study's training-length runs: one recipe at three
  lengths and another recipe at one of them.
- `run_table`: the frame the statistics read (`Runs.finished`), drawn with known effects (a true
  mean per configuration, a shared effect per seed, noise), no MLflow needed.
"""
from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

BASE_PARAMS = {"epochs": 6, "batch_size": 192, "lr": 0.05, "momentum": 0.9, "nesterov": False,
               "weight_decay": 0.0005, "schedule": "step", "milestones": "0.5,0.75", "gamma": 0.1,
               "warmup_epochs": 0.0, "label_smoothing": 0.0, "val_size": 5000, "train_subset": None,
               "test_subset": None, "workers": 2, "precision": "auto", "channels_last": True, "compile": False}

# (arch, method, args, target, seeds, final accuracy, counts: total, stored, nonzero, frozen)
CONFIGS = [
    ("resnet20", "none", {}, None, [0, 1, 2], 91.5, (269722, 269722, 269024, 0)),
    ("resnet20", "csg", {"slice": 16, "code_dim": 72, "layout": "contiguous", "generator": "learned",
                         "policy": "authors"}, None, [0, 1, 2], 90.8, (176698, 176698, 176000, 0)),
    ("resnet20", "csg", {"slice": 16, "code_dim": 32, "layout": "contiguous", "generator": "learned",
                         "policy": "authors"}, None, [0, 1], 89.9, (79898, 79898, 79200, 0)),
    ("resnet20", "csg", {"slice": 16, "code_dim": 72, "layout": "contiguous", "generator": "binary",
                         "policy": "authors"}, None, [0, 1], 88.7, (176698, 10810, 176000, 165888)),
    ("resnet20", "csg", {"slice": 16, "code_dim": 32, "layout": "contiguous", "generator": "binary",
                         "policy": "authors"}, None, [0, 1], 87.2, (79898, 6170, 79200, 73728)),
    ("resnet20", "prune", {"sparsity": 0.345}, 176698, [0, 1, 2], 90.1, (269722, 269722, 176698, 0)),
    ("resnet20", "lowrank", {"rank_ratio": 0.52}, 176698, [0, 1], 89.4, (176512, 176512, 175900, 0)),
    ("resnet56", "none", {}, None, [0, 1], 93.1, (853018, 853018, 850976, 0)),
    ("resnet56", "csg", {"slice": 16, "code_dim": 128, "layout": "contiguous", "generator": "learned",
                         "policy": "authors"}, None, [0], 92.4, (347162, 347162, 345120, 0)),
]
KNOB = {"none": "", "csg": "code_dim", "prune": "sparsity", "lowrank": "rank_ratio", "hashed": "compression",
        "width": "width"}
BUDGET = {"none": "total", "csg": "stored", "prune": "nonzero", "lowrank": "total", "hashed": "stored",
          "width": "total"}
# what the baselines' `variant` says for the arguments above (the runner logs it as a tag)
VARIANT_NAME = {"prune": "AGP once per epoch", "lowrank": "factorised from the start", "hashed": "hashes from the run seed"}
# the config fields among the params, in `RunConfig`'s order (the runner's `config_keys` tag)
CONFIG_KEYS = ["arch", "method", "target_params", "seed", "epochs", "batch_size", "lr", "momentum", "nesterov",
               "weight_decay", "schedule", "milestones", "gamma", "warmup_epochs", "label_smoothing", "val_size",
               "train_subset", "test_subset", "workers", "precision", "channels_last", "compile", "name"]
CLASSIFIER = {"resnet20": 650, "resnet56": 650}
NORMS = {"resnet20": 1376, "resnet56": 4064}


def breakdown(arch: str, method: str, args: dict, total: int) -> dict[str, float]:
    """A parameter breakdown that adds up to `total` (CSG: the generator at 16 x 9 x 16 per code dimension)."""
    from study.schema import BREAKDOWN, BREAKDOWN_TOTAL

    parts = dict.fromkeys(BREAKDOWN, 0)
    parts["classifier"], parts["normalisation"] = CLASSIFIER[arch], NORMS[arch]
    if method == "csg":
        gen = 2304 * args["code_dim"]
        parts["generator (frozen, not stored)" if args["generator"] == "binary" else "generator"] = gen
        parts["convolutions (not generated)"] = 432
        parts["codes"] = total - gen - 432 - parts["classifier"] - parts["normalisation"]
    else:
        parts["convolutions (not generated)"] = total - parts["classifier"] - parts["normalisation"]
    return {**{BREAKDOWN[c]: float(n) for c, n in parts.items()}, BREAKDOWN_TOTAL: float(total)}


def run_name(arch: str, method: str, args: dict, target, seed: int, suffix: str = "") -> str:
    if method == "csg":
        mid = f"csg-{args['slice']}x{args['code_dim']}" + ("-bin" if args.get("generator") == "binary" else "")
    elif method == "none":
        mid = "none"
    else:
        mid = f"{method}-t{target}"
    return f"{arch}-{mid}{suffix}-s{seed}"


def curves(name: str, final: float, epochs: int, seed_shift: float = 0.0) -> dict[str, list[float]]:
    """Deterministic made-up learning curves that rise towards `final`."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    out = {k: [] for k in ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "lr",
                           "epoch_seconds")}
    for e in range(1, epochs + 1):
        level = final + seed_shift - 25 * math.exp(-1.2 * e)
        val = level + rng.normal(0, 0.4)
        test = level - 0.2 + rng.normal(0, 0.4)
        out["val_acc"].append(round(val, 4))
        out["test_acc"].append(round(test, 4))
        out["train_acc"].append(round(level + 3 + rng.normal(0, 0.3), 4))
        out["train_loss"].append(round(2.3 * math.exp(-0.5 * e) + 0.05, 4))
        out["val_loss"].append(round(2.3 * math.exp(-0.45 * e) + 0.2, 4))
        out["test_loss"].append(round(2.3 * math.exp(-0.45 * e) + 0.22, 4))
        out["lr"].append(0.05 if e <= epochs // 2 else 0.005)
        out["epoch_seconds"].append(round(10 + rng.uniform(0, 1), 3))
    return out


def finals(c: dict[str, list[float]]) -> dict[str, float]:
    val, test = np.array(c["val_acc"]), np.array(c["test_acc"])
    bv, bt = int(np.argmax(val)), int(np.argmax(test))
    return {"final_test_acc": test[-1], "final_val_acc": val[-1], "best_val_acc": val[bv], "best_val_epoch": bv + 1,
            "test_acc_at_best_val": test[bv], "best_test_acc": test[bt], "best_test_epoch": bt + 1,
            "train_seconds": float(sum(c["epoch_seconds"]))}


def _log(client, exp_id: str, name: str, params: dict, tags: dict, history: dict | None, final: dict | None,
         status: str, start: int, counts: dict | None = None):
    from mlflow.entities import Metric, Param

    run = client.create_run(exp_id, run_name=name, start_time=start, tags=tags)
    rid = run.info.run_id
    metrics = [Metric(k, v, start, 0) for k, v in (counts or {}).items()]  # logged at run start, step 0
    if history:
        for key, values in history.items():
            metrics += [Metric(key, float(v), start + 1000 * i, i + 1) for i, v in enumerate(values)]
    if final:
        metrics += [Metric(k, float(v), start + 100_000, 0) for k, v in final.items()]
    client.log_batch(rid, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()])
    if status != "RUNNING":
        client.set_terminated(rid, status=status, end_time=start + 200_000)
    return rid


def _client(root: str | Path):
    """A fresh SQLite store under `root` (artifacts in `root/artifacts`): its client and tracking URI."""
    import logging

    from mlflow.tracking import MlflowClient

    for n in ("alembic", "mlflow"):
        logging.getLogger(n).setLevel(logging.ERROR)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri), uri


def _params(arch, method, args, target, seed, name, epochs, **settings) -> dict:
    """A run's params as the runner logs them: BASE_PARAMS with `settings` over them."""
    return {"arch": arch, "method": method, "seed": seed, **BASE_PARAMS, "epochs": epochs, **settings, "name": name,
            "target_params": target, **args, "budget_count": BUDGET.get(method, "total"),
            "knob": KNOB.get(method, ""), "precision_used": "fp32"}


def _tags(experiment, arch, method, name, args=None, target=None, config_keys=CONFIG_KEYS) -> dict:
    from study import schema

    return {"config_hash": f"{zlib.crc32(name.encode()):08x}", "git_commit": "0123abc", "device": "cpu",
            "torch_version": "2.x-synthetic", "precision": "fp32", "grid": experiment, "arch": arch,
            "method": method, schema.CONFIG_KEYS_TAG: json.dumps(config_keys),
            schema.METHOD_LABEL_TAG: schema.method_label(method),
            schema.VARIANT_TAG: schema.variant_label(method, dict(args or {}), target),
            schema.VARIANT_NAME_TAG: VARIANT_NAME.get(method, "")}


def _finals(hist: dict, arch: str, method: str, counts: tuple) -> dict:
    """A FINISHED run's final metrics: its curves' selections and the configuration's counts."""
    total, stored, nonzero, frozen = counts
    fin = finals(hist)
    fin.update(params_total=total, params_trainable=total - frozen, params_frozen=frozen,
               params_stored=stored, params_nonzero=nonzero, bytes_on_disk=4 * stored + 2048,
               flops=82_000_000 if arch == "resnet20" else 252_000_000, macs=41_000_000,
               kernel_gen_flops=2 * stored if method == "csg" else 0)
    return fin


START = 1_760_000_000_000  # the first synthetic run's start time (ms); each later run a little after


def make_store(root: str | Path, experiment: str = "quick", epochs: int = 6, with_failures: bool = True) -> str:
    """Log the synthetic runs into `root/mlflow.db` (artifacts in `root/artifacts`); return the tracking URI."""
    client, uri = _client(root)
    exp_id = client.create_experiment(experiment, artifact_location=(Path(root) / "artifacts").as_uri())
    start = START

    k = 0
    for arch, method, args, target, seeds, acc, counts in CONFIGS:
        for seed in seeds:
            name = run_name(arch, method, args, target, seed)
            hist = curves(name, acc, epochs, seed_shift=0.15 * seed)
            _log(client, exp_id, name, _params(arch, method, args, target, seed, name, epochs),
                 _tags(experiment, arch, method, name, args, target), hist, _finals(hist, arch, method, counts),
                 "FINISHED", start + 1_000_000 * k, breakdown(arch, method, args, counts[0]))
            k += 1
    if with_failures:
        # resnet20-none-s0 again, FINISHED and started later: it supersedes the first one, whose numbers
        # must then stay out of the statistics
        name = run_name("resnet20", "none", {}, None, 0)
        hist = curves(name + "-rerun", 91.5, epochs)
        _log(client, exp_id, name, _params("resnet20", "none", {}, None, 0, name, epochs),
             _tags(experiment, "resnet20", "none", name), hist, _finals(hist, "resnet20", "none", CONFIGS[0][6]),
             "FINISHED", start + 1_000_000 * (k + 1), breakdown("resnet20", "none", {}, 269722))
        for i, (method, args, status, reason) in enumerate([
                ("hashed", {"compression": 0.65}, "FAILED", "RuntimeError: out of memory"),
                ("width", {"width": 0.8}, "KILLED", ""),
                ("none", {}, "RUNNING", "")]):
            target = 176698 if method != "none" else None
            seed = 0 if method != "none" else 3
            name = run_name("resnet20", method, args, target, seed)
            tags = _tags(experiment, "resnet20", method, name, args, target)
            if reason:
                tags["failure_reason"] = reason
            hist = {k2: v[:2] for k2, v in curves(name, 85.0, epochs).items()}
            params = _params("resnet20", method, args, target, seed, name, epochs)
            del params["precision_used"]  # the runner logs it when a run finishes
            _log(client, exp_id, name, params, tags, hist, None, status, start + 1_000_000 * (k + 2 + i))
    return uri


# the training-length grid of configs/converged.yaml: plain and CSG 16/72 at 10, 20 and 40 epochs, one
# recipe (alternating flips) with the warm-up a fifth of the run, and the quick recipe (random flips) at
# 10 epochs: (epochs, flip, run-name suffix)
LENGTHS = [(10, "alternating", "-e10"), (20, "alternating", "-e20"), (40, "alternating", ""),
           (10, "random", "-e10-quickrecipe")]


def make_lengths_store(root: str | Path, experiment: str = "converged", seeds=(0, 1)) -> str:
    """Log the converged study's training-length runs (`LENGTHS`), FINISHED; return the tracking URI.

    The recipe is the fast one of the converged study where it matters here: a one-cycle schedule whose
    warm-up is a fifth of the run (2, 4, 8 epochs), and the flips; accuracy rises with the length."""
    client, uri = _client(root)
    exp_id = client.create_experiment(experiment, artifact_location=(Path(root) / "artifacts").as_uri())
    keys = CONFIG_KEYS[:CONFIG_KEYS.index("workers") + 1] + ["flip"] + CONFIG_KEYS[CONFIG_KEYS.index("workers") + 1:]
    k = 0
    for epochs, flip, suffix in LENGTHS:
        for arch, method, args, target, _, acc, counts in CONFIGS[:2]:  # resnet20 plain and CSG 16/72
            for seed in seeds:
                name = run_name(arch, method, args, target, seed, suffix)
                hist = curves(name, acc - 6 + 1.5 * math.log2(epochs / 10) - (flip == "random"), epochs,
                              seed_shift=0.15 * seed)
                params = _params(arch, method, args, target, seed, name, epochs, schedule="onecycle",
                                 warmup_epochs=epochs / 5, flip=flip)
                _log(client, exp_id, name, params, _tags(experiment, arch, method, name, args, target, keys), hist,
                     _finals(hist, arch, method, counts), "FINISHED", START + 1_000_000 * k,
                     breakdown(arch, method, args, counts[0]))
                k += 1
    return uri


# -- run tables with known effects ------------------------------------------------------------------
# name -> (method, method args, parameter target, counts: total, stored, nonzero); the baselines are at
# CSG 16/72's budget (its stored count), as in the quick study
TABLE_CONFIGS = {
    "plain": ("none", {}, None, (269722, 269722, 269722)),
    "csg": ("csg", {"slice": 16, "code_dim": 72}, None, (176698, 176698, 176698)),
    "csg-d32": ("csg", {"slice": 16, "code_dim": 32}, None, (79898, 79898, 79898)),
    "csg-block": ("csg", {"slice": 16, "code_dim": 72, "layout": "block"}, None, (176698, 176698, 176698)),
    "prune": ("prune", {"sparsity": 0.348, "mode": "gradual", "start": 0.1, "end": 0.5}, 176698,
              (269722, 269722, 176698)),
    "filterprune": ("filterprune", {"ratio": 0.35, "prune_at": 0.5}, 176698, (176318, 176318, 176318)),
    "lowrank": ("lowrank", {"rank_ratio": 0.7, "mode": "scratch"}, 176698, (176700, 176700, 176700)),
    "hashed": ("hashed", {"compression": 0.652, "hash_seed": 0}, 176698, (176696, 176696, 176696)),
    "width": ("width", {"width": 0.805}, 176698, (178435, 178435, 178435)),
    "softshare": ("softshare", {"templates": 2}, 176698, (177609, 177609, 177609)),
}
TABLE_BASELINES = ["prune", "filterprune", "lowrank", "hashed", "width", "softshare"]
ARG_COLUMNS = sorted({k for _, args, _, _ in TABLE_CONFIGS.values() for k in args})
TABLE_BUDGET = {**BUDGET, "filterprune": "total", "softshare": "total"}


def run_table(means: dict[str, float], seeds=(0, 1, 2), noise_sd: float = 0.3, seed_sd: float = 0.5, rng=0,
              epochs: int = 10, experiment: str = "synthetic", arch: str = "resnet20",
              recipes: dict[str, dict] | None = None) -> pd.DataFrame:
    """FINISHED runs as the analysis reads them, with known effects.

    Accuracy = means[name] + the seed's effect (one draw per seed, shared by every configuration: the
    seed is a block) + noise, for each configuration `name` of TABLE_CONFIGS in `means`.  `seeds` is
    one list for every configuration or a dict name -> list; `rng` a seed or a numpy Generator.  Both
    headline and final accuracy get the value.  Configurations are keyed by name and training length,
    so tables with different `epochs` concatenate into one with several training lengths.

    A name "plain/quick" is the configuration "plain" under the recipe "quick", a key of `recipes`
    that gives its training settings (columns such as `flip`): each recipe its own protocol, linked
    across lengths to the same name and recipe at another length.
    """
    from analysis.load import variant_label
    from study.schema import VARIANT_NAME_TAG, method_label

    rng = np.random.default_rng(rng)
    per = seeds if isinstance(seeds, dict) else {name: list(seeds) for name in means}
    every = sorted({s for v in per.values() for s in v})
    seed_effect = dict(zip(every, rng.normal(0.0, seed_sd, len(every))))
    rows = []
    settings = sorted({k for r in (recipes or {}).values() for k in r})
    for name, mean in means.items():
        config, _, recipe = name.partition("/")
        method, args, target, (total, stored, nonzero) = TABLE_CONFIGS[config]
        stem = name.replace("/", "-")
        for seed in per[name]:
            acc = float(mean + seed_effect[seed] + rng.normal(0.0, noise_sd))
            row = {"experiment": experiment, "run_name": f"{stem}-e{epochs}-s{seed}",
                   "run_id": f"{stem}-{epochs}-{seed}",
                   "status": "FINISHED", "superseded": False, "group": f"{name}@{epochs}",
                   "protocol": f"{experiment}:{epochs}" + (f":{recipe}" if recipe else ""), "across_lengths": name,
                   **{k: (recipes or {}).get(recipe, {}).get(k) for k in settings}, "arch": arch, "method": method,
                   "method_label": method_label(method), "seed": seed, "epochs": epochs, "epochs_completed": epochs,
                   "target_params": target, "budget_count": TABLE_BUDGET.get(method, "total"),
                   "method_args": json.dumps(sorted(args)), **args,
                   "params_total": total, "params_trainable": total, "params_frozen": 0, "params_stored": stored,
                   "params_nonzero": nonzero, "bytes_on_disk": 4 * total + 2048,
                   "test_acc_at_best_val": acc, "final_test_acc": acc, "best_val_acc": acc, "best_test_acc": acc,
                   "train_seconds": 600.0}
            row["variant"] = variant_label(row, sorted(args))
            row[VARIANT_NAME_TAG] = ""
            rows.append(row)
    table = pd.DataFrame(rows)
    for k in ARG_COLUMNS + ["target_params"]:  # as the loader types them: an int stays an int beside missing values
        table[k] = pd.Series([r.get(k) for r in rows], dtype=object)
    return table
