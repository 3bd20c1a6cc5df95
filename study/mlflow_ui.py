"""What makes MLflow 3's UI show a run: its datasets and models.

The experiment's type and view are part of the store contract, `study.schema` (the analysis sets them
too): `schema.describe_experiment` tags the experiment as model training (`mlflow.experimentKind` =
`custom_model_development`, MLflow 3's experiment-type tag) and stores a shared view of the run table
(`mlflow.sharedViewState.study`: headline accuracy, method, code dimension and parameter counts as
columns, sorted by the headline).  MLflow 3.17's UI takes the workflow (GenAI or machine learning)
and the columns from the URL, so `python -m analysis ui` prints the URL that opens both:
`#/experiments/ID/runs?viewStateShareKey=study&workflowType=machine_learning` (`schema.ui_path`).

- `describe_run` / `log_datasets`: the data each run trained and was judged on, as MLflow dataset inputs (one per split,
  context `training` / `validation` / `test`), each with the md5 of its images and labels as digest and
  the split sizes in its profile.
- `log_models`: the final network as an MLflow model (`mlflow.pytorch`, pickled, a few MB at most;
  named `trained_network`), and for CSG the materialised network too (`materialized_network`) (ordinary convolutions, same outputs), so the run table's Models
  column and `mlflow.pytorch.load_model` work.  Loading them needs this project importable.

None of this may fail a run: every function logs a warning and records `ui_logging_error` instead.
"""
from __future__ import annotations

import hashlib
import json
import logging

import torch

log = logging.getLogger(__name__)

SPLITS = (("train", "training"), ("val", "validation"), ("test", "test"))
# the logged models' names: not "model", which MLflow 3 would merge into the run's own `model/` artifacts
# (`model/model.pt`, read back by generator reuse) when listing or downloading them
MODEL_NAMES = ("trained_network", "materialized_network")


def _md5(x: torch.Tensor, y: torch.Tensor) -> str:
    h = hashlib.md5()
    h.update(x.contiguous().numpy().tobytes())
    h.update(y.contiguous().numpy().tobytes())
    return h.hexdigest()


def dataset_inputs(cfg, data_root: str) -> list:
    """One `DatasetInput` per split the run uses, built from the loaders the trainer builds."""
    import numpy as np
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.types import Schema, TensorSpec
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    from study.data.cifar import locate
    from study.models import get_arch
    from study.tasks import get_task

    task = get_arch(cfg.arch).task
    loaders = get_task(task).loaders(cfg, data_root, torch.device("cpu"))
    splits = {name: getattr(loaders, name) for name, _ in SPLITS}
    if not all(hasattr(s, "x") and hasattr(s, "y") for s in splits.values()):
        return []  # a task whose loaders do not hold tensors (e.g. streamed folders): nothing to hash
    sizes = {name: int(len(s.y)) for name, s in splits.items()}
    try:
        kind, folder = locate(data_root, check_md5=False)
        source = json.dumps({"uri": str(folder.resolve())})
    except Exception:  # noqa: BLE001
        source = json.dumps({"uri": str(data_root)})
    out = []
    for name, context in SPLITS:
        s = splits[name]
        features = Schema([TensorSpec(np.dtype(str(s.x.dtype).removeprefix("torch.")), (-1, *s.x.shape[1:]),
                                      "image")])
        targets = Schema([TensorSpec(np.dtype(str(s.y.dtype).removeprefix("torch.")), (-1,), "label")])
        profile = {"split": name, "num_examples": sizes[name], "split_sizes": sizes, "split_seed": cfg.seed,
                   "val_size": cfg.val_size, "train_subset": cfg.train_subset, "test_subset": cfg.test_subset,
                   "digest": "md5 of the split's uint8 images then int64 labels, as stored"}
        ds = Dataset(name=task, digest=_md5(s.x.cpu(), s.y.cpu()), source_type="local", source=source,
                     schema=json.dumps({"mlflow_tensorspec": {"features": features.to_json(),
                                                              "targets": targets.to_json()}}),
                     profile=json.dumps(profile, sort_keys=True))
        out.append(DatasetInput(ds, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)]))
    return out


# one colour per method in the UI's charts and tables (MLflow's own `mlflow.runColor` run tag)
METHOD_COLORS = {"none": "#1f77b4", "csg": "#d62728", "prune": "#2ca02c", "filterprune": "#17becf",
                 "lowrank": "#9467bd", "hashed": "#8c564b", "width": "#e377c2", "softshare": "#7f7f7f"}


def describe_run(client, run_id: str, cfg, data_root: str) -> None:
    """A new run's dataset inputs (`log_datasets`) and its colour in the UI (by method)."""
    try:
        client.set_tag(run_id, "mlflow.runColor", METHOD_COLORS.get(cfg.method, "#bcbd22"))
    except Exception as e:  # noqa: BLE001
        log.warning("could not colour run %s: %s", run_id, e)
    log_datasets(client, run_id, cfg, data_root)


def log_datasets(client, run_id: str, cfg, data_root: str) -> None:
    try:
        inputs = dataset_inputs(cfg, data_root)
        if inputs:
            client.log_inputs(run_id, datasets=inputs)
    except Exception as e:  # noqa: BLE001
        log.warning("could not log the datasets of run %s: %s", run_id, e)
        _note(client, run_id, f"datasets: {type(e).__name__}: {e}")


def _requirements() -> list[str]:
    import importlib.metadata as md

    out = []
    for pkg in ("torch", "torchvision", "numpy", "cloudpickle"):
        try:
            out.append(f"{pkg}=={md.version(pkg)}")
        except md.PackageNotFoundError:
            pass
    return out


def log_models(tracking_uri: str, run_id: str, model: torch.nn.Module, cfg, step: int) -> list[str]:
    """Log `model` (and its materialised form for CSG) with mlflow.pytorch; the logged models' ids."""
    import mlflow
    import mlflow.pytorch
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from study.csg import generated_convs, materialize
    from study.models import get_arch

    import copy

    ids = []
    try:
        mlflow.set_tracking_uri(tracking_uri)
        # a logged model belongs to the active experiment (else "Default", with artifacts in ./mlruns)
        mlflow.set_experiment(experiment_id=mlflow.MlflowClient(tracking_uri).get_run(run_id).info.experiment_id)
        model = copy.deepcopy(model).to("cpu").eval()  # the caller's network stays where it is
        shape = get_arch(cfg.arch).input_size
        if cfg.image_size is not None:
            shape = (shape[0], cfg.image_size, cfg.image_size)
        with torch.no_grad():
            out = model(torch.zeros(1, *shape))
        signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *shape))]),
                                   outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *out.shape[1:]))]))
        nets = [(MODEL_NAMES[0], model)]
        if any(True for _ in generated_convs(model)):
            with torch.no_grad():
                nets.append((MODEL_NAMES[1], materialize(model).eval()))
        quiet = logging.getLogger("mlflow.pytorch")  # its warning about pickles: we load our own files only
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            for name, net in nets:
                ids.append(_log_one(net, name, run_id, step, signature))
        finally:
            quiet.setLevel(level)
    except Exception as e:  # noqa: BLE001
        log.warning("could not log the model of run %s: %s", run_id, e)
        _note(mlflow.MlflowClient(tracking_uri), run_id, f"model: {type(e).__name__}: {e}")
    return ids


def _log_one(net, name, run_id, step, signature) -> str:
    import mlflow.pytorch

    what = "final" if name == MODEL_NAMES[0] else "final, generated kernels materialised as ordinary convolutions"
    info = mlflow.pytorch.log_model(net, name=name, run_id=run_id, step=step, signature=signature,
                                    serialization_format="pickle", pip_requirements=_requirements(),
                                    tags={"network": what})
    return info.model_id


def _note(client, run_id: str, text: str) -> None:
    try:
        client.set_tag(run_id, "ui_logging_error", text.splitlines()[0][:480] if text else "?")
    except Exception:  # noqa: BLE001
        pass
