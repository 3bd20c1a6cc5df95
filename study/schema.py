"""The store contract: everything the training side and the analysis must agree on about the MLflow
store, and nothing else.  That is the names the runner logs and the analysis reads back, the labels
both show and how a logged param reads back, the store's default location and layout
(`default_tracking_uri`, `artifact_location`) and the tags that open a study in MLflow's UI
(`experiment_tags`, `describe_experiment`, `ui_path`).

Standard library only (no torch, no mlflow), so that `analysis/` can import it without the training
code: this is the only module of `study` the analysis imports.  The per-epoch metrics, the
breakdown (step 0) and the label tags are logged by the runner (`study/runner.py`) for every run it
starts, the final metrics and the precision tag when a run finishes, `failure_reason` when one
fails; the breakdown and the labels are added to older runs by `python -m study backfill-metadata`
(`study/metadata.py`).
"""
from __future__ import annotations

import ast
import json
import logging
import os
import re
from pathlib import Path

# -- what the runner logs ---------------------------------------------------------------------------
# per-epoch metrics (step = epoch, 1-based)
EPOCH_METRICS = ["train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "lr", "epoch_seconds"]
# single-value metrics logged once training ends (step = the number of epochs)
FINAL_METRICS = ["final_test_acc", "final_val_acc", "best_val_acc", "best_val_epoch", "test_acc_at_best_val",
                 "best_test_acc", "best_test_epoch", "params_total", "params_trainable", "params_frozen",
                 "params_stored", "params_nonzero", "bytes_on_disk", "bytes_sparse", "bytes_sparse_index", "flops",
                 "macs", "kernel_gen_flops", "train_seconds"]
HEADLINE = "test_acc_at_best_val"

# the parameter breakdown: unique parameters of the network as training ends it, by role
# (`study.accounting.breakdown`), logged at run start (step 0) as one metric per role
BREAKDOWN = {"generator": "breakdown_generator",
             "generator (frozen, not stored)": "breakdown_generator_frozen",
             "codes": "breakdown_codes",
             "convolutions (not generated)": "breakdown_convolutions",
             "classifier": "breakdown_classifier",
             "normalisation": "breakdown_normalisation",
             "other": "breakdown_other"}
CATEGORIES = list(BREAKDOWN)
BREAKDOWN_TOTAL = "breakdown_total"
BREAKDOWN_METRICS = [*BREAKDOWN.values(), BREAKDOWN_TOTAL]

# what a manifest.csv (`python -m analysis report`) lists beyond the run's identity and final metrics,
# so that a report regenerated from it needs nothing else
MANIFEST_EXTRA = ["budget_count", "knob", "variant_name", *BREAKDOWN_METRICS]

# params the runner adds beside the config fields; they describe the run, not the method's arguments
DERIVED_PARAMS = ["budget_count", "knob", "precision_used"]

# tags
CONFIG_KEYS_TAG = "config_keys"    # JSON list of the RunConfig fields among the params, in field order
SOURCE_TAG = "study.source_tracking_uri"  # on an experiment loaded from a portable export: the store it was logged to
METHOD_LABEL_TAG = "method_label"  # the method as shown ("plain" for method "none")
VARIANT_TAG = "variant"            # the method's arguments as shown (`variant_label`)
VARIANT_NAME_TAG = "variant_name"  # a baseline's procedure in its own words (`Method.variant`), or ""
LABEL_TAGS = [CONFIG_KEYS_TAG, METHOD_LABEL_TAG, VARIANT_TAG, VARIANT_NAME_TAG]
# on a FINISHED run that `study retrain` set aside, why: the grid then trains its configuration afresh
# under the same name, and the new run supersedes this one once it has finished
RETRAINED_TAG = "retrained"
# every run's other tags (the analysis reads these; `failure_reason` only where a run failed or stopped)
TAGS = ["config_hash", "git_commit", "device", "torch_version", "precision", "grid", "arch", "method",
        "failure_reason"]

# -- display order and labels -----------------------------------------------------------------------
ARCH_ORDER = ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "densenet_bc_k36", "densenet_bc_k48",
              "mobilenetv2", "shufflenetv2_0_5", "imagenet_resnet18", "imagenet_resnet50", "deeplabv3_resnet50",
              "deeplabv3_resnet101"]
PLAIN = "none"  # the plain network's method name in configs and in the store; shown as "plain"
METHOD_ORDER = [PLAIN, "csg", "prune", "filterprune", "lowrank", "hashed", "width", "softshare", "hypernet"]
METHOD_LABEL = {PLAIN: "plain", "csg": "CSG", "prune": "pruning", "filterprune": "filter pruning",
                "lowrank": "low-rank", "hashed": "HashedNets", "width": "width scaling", "softshare": "soft sharing",
                "hypernet": "HyperNetwork"}

# CSG's arguments when a grid gives none (`study.methods.csg.CSG.defaults`); a CSG label leaves out the
# generator, layout and policy while they are at these values
CSG_DEFAULTS = {"slice": 16, "code_dim": 72, "layout": "contiguous", "generator": "learned", "policy": "authors"}
CSG_LABEL_DEFAULTS = {k: CSG_DEFAULTS[k] for k in ("generator", "layout", "policy")}


def method_label(method) -> str:
    return METHOD_LABEL.get(method, str(method))


# -- reading a logged param back --------------------------------------------------------------------
_INT = re.compile(r"^[+-]?\d+$")
_NULL = {"", "None", "none", "null", "NULL", "nan", "NaN"}


def parse_value(text):
    """'3' -> 3, '0.05' -> 0.05, 'True' -> True, 'None' -> None; anything else stays as it is."""
    if text is None or (isinstance(text, float) and text != text):
        return None
    if not isinstance(text, str):
        return text
    s = text.strip()
    if s in _NULL:
        return None
    if s in ("True", "true"):
        return True
    if s in ("False", "false"):
        return False
    if _INT.match(s):
        return int(s)
    try:
        return float(s)
    except ValueError:
        return text


def literal(v):
    """MLflow logs a list argument as its repr ('[2, 4, 3]'); read it back as the list."""
    if isinstance(v, str) and v.startswith(("[", "{", "(")):
        try:
            return ast.literal_eval(v)
        except (ValueError, SyntaxError):
            return v
    return v


def method_arg_keys(params, config_keys) -> list[str]:
    """The method's own arguments among a run's params: neither a config field nor a derived param."""
    return sorted(k for k in params if k not in set(config_keys) and k not in DERIVED_PARAMS)


# -- variant labels ---------------------------------------------------------------------------------
def fmt_arg(v) -> str:
    if isinstance(v, float) and v.is_integer() and abs(v) >= 1:
        return str(int(v))
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def without_seed(run_name: str) -> str:
    """A run's name with the seed the grid's default names end in taken off ('resnet20-csg16x72-s1' ->
    'resnet20-csg16x72'): the name of its configuration, where another run names it as its budget or its
    generator's source (the dependant of seed s names the run of seed s)."""
    return re.sub(r"-s\d+$", "", run_name)


def variant_label(method, args: dict, target=None) -> str:
    """A short human name for a method's arguments: 'S16 d72', 'S16 d72 binary', 'sparsity=0.5',
    'S16 d72 reuse generator_from=resnet20-csg16x72'.

    `args`: plain values as read back from the params (`parse_value`); None values are left out.  A reused
    generator's source is named without its seed, and the config hash the grid adds beside it is left out:
    both change with the seed, which is not part of a configuration."""
    args = {k: v for k, v in args.items() if v is not None and k != "generator_from_hash"}
    if "generator_from" in args:
        args["generator_from"] = without_seed(str(args["generator_from"]))
    if method == "csg":
        parts = []
        if "slice" in args:
            parts.append(f"S{fmt_arg(args.pop('slice'))}")
        if "code_dim" in args:
            parts.append(f"d{fmt_arg(args.pop('code_dim'))}")
        for key, show in (("generator", "{}"), ("layout", "{} layout"), ("policy", "policy={}")):
            if args.get(key, CSG_LABEL_DEFAULTS[key]) != CSG_LABEL_DEFAULTS[key]:
                parts.append(show.format(args[key]))
            args.pop(key, None)
        parts += [f"{k}={fmt_arg(v)}" for k, v in sorted(args.items())]
        label = " ".join(parts)
    else:
        label = ", ".join(f"{k}={fmt_arg(v)}" for k, v in sorted(args.items()))
    if target is not None and method != "csg":
        label = (label + ", " if label else "") + f"target={fmt_arg(target)}"
    return label or "-"


_CSG_WORD = re.compile(r"^(S(?P<slice>\d+)|d(?P<code_dim>\d+))$")


def args_from_variant(method, label) -> dict[str, str]:
    """`variant_label` read backwards: a run's method arguments (as text, `target` as `target_params`).

    For runs known only from a `manifest.csv`, which lists the label and not the arguments.  The
    defaults a CSG label leaves out (`CSG_LABEL_DEFAULTS`) come back; a float reads back as the label
    printed it (6 significant digits).
    """
    label = "" if label is None or (isinstance(label, float) and label != label) else str(label)
    if label in ("", "-"):
        return {}
    args: dict[str, str] = {}
    if method == "csg":
        words = label.split(" ")
        i = 0
        while i < len(words):
            w, m = words[i], _CSG_WORD.match(words[i])
            if m:
                args.update({k: v for k, v in m.groupdict().items() if v is not None})
            elif "=" in w:
                k, v = w.split("=", 1)
                args[k] = v
            elif i + 1 < len(words) and words[i + 1] == "layout":
                args["layout"] = w
                i += 1
            else:
                args["generator"] = w
            i += 1
        return {**CSG_LABEL_DEFAULTS, **args}
    for part in re.split(r", (?=[A-Za-z_]\w*=)", label):  # a list value ('[2, 4, 3]') keeps its commas
        k, v = part.split("=", 1)
        args["target_params" if k == "target" else k] = v
    return args


# -- the MLflow UI: experiment tags and the run-table view (runs' datasets and models: study/mlflow_ui.py)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
VIEW_KEY = "study"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
COLUMNS = [f"metrics.`{HEADLINE}`", "params.`method`", "params.`code_dim`", "params.`slice`",
           "metrics.`params_stored`", "metrics.`params_total`", "params.`seed`", "attributes.`Models`",
           "attributes.`Dataset`"]


def view_state() -> dict:
    """The run table as a researcher wants it first: the MLflow UI's own shared-view format."""
    return {"orderByKey": f"metrics.`{HEADLINE}`", "orderByAsc": False, "selectedColumns": COLUMNS,
            "columnOrder": ["tags.`mlflow.runName`", *COLUMNS], "columnWidths": {f"metrics.`{HEADLINE}`": 190},
            "runsHiddenMode": "SHOW_ALL"}


def experiment_tags() -> dict[str, str]:
    """The experiment tags that open a study in MLflow 3's model-training view with the run table above."""
    return {EXPERIMENT_KIND_TAG: MODEL_TRAINING, VIEW_TAG: json.dumps(view_state(), sort_keys=True)}


def ui_path(experiment_id: str) -> str:
    """The UI route (after `#`) that opens the experiment's run table in the training view with our columns."""
    return f"/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}&workflowType=machine_learning"


def describe_experiment(client, experiment_id: str, description: str | None = None) -> None:
    """Set `experiment_tags` (and a description, if none) on an experiment; never raises (cosmetic)."""
    try:
        exp = client.get_experiment(experiment_id)
        want = experiment_tags()
        if description and not exp.tags.get("mlflow.note.content"):
            want["mlflow.note.content"] = description.strip()
        for key, value in want.items():
            if exp.tags.get(key) != value:
                client.set_experiment_tag(experiment_id, key, value)
    except Exception as e:  # noqa: BLE001
        logging.getLogger(__name__).warning("could not tag experiment %s for the UI: %s", experiment_id, e)


# -- the store's location and the embedded store's layout ----------------------------------------
def default_tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI`, else the SQLite store `mlflow.db` in the project (the repository root)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(__file__).resolve().parents[1] / 'mlflow.db'}"


def artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Where an experiment of an embedded store keeps its artifacts: `mlartifacts/<name>` beside the
    SQLite file (not the working directory); None (MLflow's default) for any other store."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts" / experiment).as_uri()
