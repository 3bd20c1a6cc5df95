"""Where a step's time goes: real ResNet-20 training steps (the trainer's own `train_step`) and one
evaluation pass under `torch.profiler`, each operator's own CPU time put in one category."""
from __future__ import annotations

from study.bench.throughput import fast_recipe_config, trainer_step


SCOPES = ("data", "evaluation", "optimizer", "csg_product")  # record_function scopes: all time inside counts
OPERATOR_CATEGORIES = (  # (category, operator names) for time outside the scopes, by the operator's own time
    ("conv forward", ("aten::mkldnn_convolution", "aten::_convolution", "aten::convolution", "aten::conv2d")),
    ("conv backward", ("aten::convolution_backward", "aten::mkldnn_convolution_backward")),
    ("batchnorm", ("aten::native_batch_norm", "aten::native_batch_norm_backward", "aten::batch_norm",
                   "aten::_batch_norm_impl_index", "aten::_native_batch_norm_legit")),
    ("relu", ("aten::relu", "aten::relu_", "aten::clamp_min", "aten::clamp_min_", "aten::threshold_backward")),
    ("residual and other adds", ("aten::add", "aten::add_")),
)


def _category(event) -> str:
    """The scope an operator ran in (its own name or an ancestor's), else its operator category."""
    node = event
    while node is not None:
        if node.name in SCOPES:
            return node.name
        node = node.cpu_parent
    for category, names in OPERATOR_CATEGORIES:
        if event.name in names:
            return category
    return "other"


def profile_breakdown(a, precision: str, data) -> dict:
    """Share of CPU time by category over `--profile-steps` real training steps of ResNet-20 (plain,
    then CSG 16/72) and one evaluation pass over 2,000 test images, in the trainer's own step."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from study.data.cifar import CifarLoader
    from study.methods import build
    from study.tasks import get_task
    from study.train import autocast_for

    autocast = autocast_for(precision, torch.device("cpu"))
    cfg, task = fast_recipe_config(a.batch_size), get_task("cifar10")
    n = min(len(data.train_y), a.batch_size * a.profile_steps)
    out = {}
    for label, method, args in (("plain", "none", {}), ("csg 16/72", "csg", {"slice": 16, "code_dim": 72})):
        torch.manual_seed(0)
        model, _ = build("resnet20", method, args)
        model = model.to(memory_format=torch.channels_last)
        step = trainer_step(model, cfg, autocast)
        opt = step.optimizer
        train_loader = CifarLoader(data.train_x[:n], data.train_y[:n], a.batch_size, train=True, channels_last=True)
        test_loader = CifarLoader(data.test_x[:2000], data.test_y[:2000], 500, train=False, channels_last=True)
        opt_step = opt.step

        def timed_step(*args, **kwargs):  # the optimiser's own time, in its scope
            with record_function("optimizer"):
                return opt_step(*args, **kwargs)
        opt.step = timed_step
        for x, y in train_loader:  # untimed warm-up pass: oneDNN primitives, allocator
            step(x, y)
            break
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model.train()
            batches = iter(train_loader)
            while True:
                with record_function("data"):
                    batch = next(batches, None)
                if batch is None:
                    break
                step(*batch)
            with record_function("evaluation"):
                task.evaluate(model, test_loader, autocast)
        totals: dict[str, float] = {}
        for event in prof.events():
            category = _category(event)
            totals[category] = totals.get(category, 0.0) + event.self_cpu_time_total
        whole = sum(totals.values())
        out[label] = {"steps": len(train_loader), "images": n, "eval_images": 2000, "cpu_seconds": round(whole / 1e6, 3),
                      "share": {k: round(v / whole, 4) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}}
    return out


