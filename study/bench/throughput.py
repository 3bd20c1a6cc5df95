"""Images per second, training steps and evaluation batches, plain against CSG, models interleaved.

Every timed training step is `study.train.train_step`, the trainer's own, with the fast recipe's
optimiser and loss.
"""
from __future__ import annotations

import dataclasses
import functools
import statistics
import time


def csg_row_label(args: dict) -> str:
    """How the bench names a CSG configuration in its rows and settings: 'csg 16/72' (and its layout
    where it is not the contiguous one)."""
    tag = f"csg {args['slice']}/{args['code_dim']}"
    return tag if args.get("layout", "contiguous") == "contiguous" else f"{tag} {args['layout']}"


@functools.cache
def _fast_recipe():
    from study import grid
    from study.env import PROJECT

    return grid.resolve_run(PROJECT / "configs" / "fast91.yaml", "none")


def fast_recipe_config(batch_size: int):
    """The settings a timed step trains with (the fast recipe): configs/fast91.yaml's plain run (its
    optimiser, schedule and loss), read from the file as the grid reads it (but with no model built),
    so that the bench cannot drift from the recipe."""
    return dataclasses.replace(_fast_recipe(), batch_size=batch_size)


def trainer_step(model, cfg, autocast, *, forward=None, steps_per_epoch: int = 10 ** 6, optimizer=None):
    """`step(x, y)`: one `study.train.train_step` (the trainer's own step, CIFAR-10's loss) of `model`
    (called as `forward`, e.g. its compiled form), with `make_optimizer`'s optimiser and schedule for
    `cfg` unless `optimizer` gives the pair.  `step.optimizer` is the optimiser."""
    import torch

    from study.tasks import get_task
    from study.train import make_optimizer, train_step

    opt, sched = optimizer or make_optimizer(model, cfg, steps_per_epoch=steps_per_epoch, steps_done=0)
    scaler, task = torch.amp.GradScaler("cpu", enabled=False), get_task("cifar10")
    forward = model if forward is None else forward

    def step(x, y):
        return train_step(forward, x, y, opt, sched, scaler, task, cfg, autocast)
    step.optimizer = opt
    return step


def _make_eval(model, x, autocast):
    import torch

    def batch():
        with torch.no_grad(), autocast():
            return model(x).float()
    return batch


def throughput(arch_name: str, configs: list[dict], a, precision: str, mode: str) -> list[dict]:
    import torch

    from study import accounting
    from study.methods import build
    from study.train import autocast_for, compiled_forward

    autocast = autocast_for(precision, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch_size, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (a.batch_size,), generator=g)
    cfg = fast_recipe_config(a.batch_size)
    compiled = mode == "compile"
    entries = []
    for method, args in [("none", {})] + [("csg", c) for c in configs]:
        torch.manual_seed(0)
        model, _ = build(arch_name, method, args)
        model = model.to(memory_format=torch.channels_last)
        forward = compiled_forward(model) if compiled else model
        step = trainer_step(model, cfg, autocast, forward=forward)
        entries.append({"model": model, "step": functools.partial(step, x, y),
                        "eval": _make_eval(forward, x, autocast), "train": [], "infer": [],
                        "label": "plain" if method == "none" else csg_row_label(args), "args": args,
                        "params": accounting.count_parameters(model)})
    for e in entries:  # warm-up: oneDNN primitives, allocator, autocast caches (and compilation)
        e["model"].train()
        for _ in range(max(a.warmup, 2 if compiled else 0)):
            e["step"]()
        e["model"].eval()
        for _ in range(max(a.warmup, 2 if compiled else 0)):
            e["eval"]()
    n = a.batch_size * a.steps
    for _ in range(a.repeats):  # every model's training steps, then every model's evaluation batches
        for training, call, rates in ((True, "step", "train"), (False, "eval", "infer")):
            for e in entries:
                e["model"].train(training)
                t = time.perf_counter()
                for _ in range(a.steps):
                    e[call]()
                e[rates].append(n / (time.perf_counter() - t))
    plain = entries[0]
    out = []
    for e in entries:
        row = {"arch": arch_name, "config": e["label"], "mode": mode, "method": "none" if e is plain else "csg",
               **({k: e["args"][k] for k in ("slice", "code_dim", "layout")} if e is not plain else {}),
               "params_total": e["params"]["total"],
               "train_images_per_s": round(statistics.median(e["train"]), 1),
               "eval_images_per_s": round(statistics.median(e["infer"]), 1),
               "train_images_per_s_repeats": [round(v, 1) for v in e["train"]],
               "eval_images_per_s_repeats": [round(v, 1) for v in e["infer"]]}
        if e is not plain:
            row["train_over_plain"] = round(statistics.median(c / p for c, p in zip(e["train"], plain["train"])), 4)
            row["eval_over_plain"] = round(statistics.median(c / p for c, p in zip(e["infer"], plain["infer"])), 4)
            # best repeat against best repeat: the usual estimator when other processes interfere
            # (they only ever slow a repeat down); a cross-check of the medians, not a replacement
            row["train_over_plain_best"] = round(max(e["train"]) / max(plain["train"]), 4)
            row["eval_over_plain_best"] = round(max(e["infer"]) / max(plain["infer"]), 4)
        out.append(row)
    return out


