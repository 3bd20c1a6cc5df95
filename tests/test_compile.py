"""`compile: true` (issue 12, part 1): what compiling the training step costs, and what it must not change.

  * a compiled step gives the eager step's loss within bf16 tolerance on a real batch, and its
    backward moves the weights as the eager one does;
  * a run compiles once per network shape: the first batches, one more time for the epoch's last,
    smaller batch (after which the batch dimension is dynamic), and once more when a method reshapes
    the network (filter pruning, decomposition) or hooks masks onto it (magnitude pruning), never again;
  * compiled CSG generates each layer's kernel once per forward pass, as eager CSG does.

Counting compilations uses a counting backend in place of inductor: how often torch compiles is
decided by the guards of the traced frame, which do not depend on the backend, and the counting
backend costs seconds where inductor costs a minute a graph on these cores.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from study.bench.throughput import fast_recipe_config
from study.config import RunConfig
from study.csg import generated_convs, generators
from study.data import cifar as data
from study.env import resolve_precision
from study.methods import build
from study.tasks import get_task
from study.train import autocast_for, make_optimizer, train, train_step

CPU = torch.device("cpu")


@pytest.mark.slow
def test_compiled_step_matches_eager_within_bf16_tolerance(cifar):
    cfg = fast_recipe_config(64)
    precision = resolve_precision("auto", CPU)
    autocast = autocast_for(precision, CPU)
    task = get_task("cifar10")
    torch.manual_seed(0)
    eager, _ = build("resnet20", "none")
    eager = eager.to(memory_format=torch.channels_last).train()
    twin, start = copy.deepcopy(eager), copy.deepcopy(eager.state_dict())
    loader = data.CifarLoader(cifar.train_x[:192], cifar.train_y[:192], 64, train=True, seed=0, channels_last=True)
    batches = list(loader)
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    def run(model, forward, autocast):
        opt, sched = make_optimizer(model, cfg, len(batches), 0, set())
        return [float(train_step(forward, x, y, opt, sched, scaler, task, cfg, autocast)[0]) for x, y in batches]

    eager_losses = run(eager, eager, autocast)
    compiled_losses = run(twin, torch.compile(twin), autocast)
    # bf16 keeps 8 bits of mantissa (a relative step of 2^-8, 0.4%); fused kernels round differently
    tol = 1e-2 if precision in ("bf16", "fp16") else 1e-4
    assert compiled_losses == pytest.approx(eager_losses, rel=tol), (precision, eager_losses, compiled_losses)

    # after the same steps the compiled network's weights are as close to the eager network's as
    # bf16 itself leaves them (eager bf16 against eager fp32): the compiled backward is right too
    def flat(model):
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    moved = float((flat(eager) - torch.cat([start[n].reshape(-1) for n, _ in eager.named_parameters()])).norm())
    gap = float((flat(twin) - flat(eager)).norm())
    if precision == "fp32":
        # fused kernels sum in another order: on an AVX2-only AMD EPYC one fp32 step's gradients differed by
        # ~1.2% (BatchNorm and conv weights) and the weights after 3 steps by 5% of their movement, while a
        # wrong backward (a missing or doubled term) moves them by the order of the movement itself
        assert gap <= 0.1 * moved, (gap, moved)
    else:
        fp32 = copy.deepcopy(eager)
        fp32.load_state_dict(start)
        run(fp32, fp32, autocast_for("fp32", CPU))
        rounding = float((flat(eager) - flat(fp32)).norm())
        assert gap <= 2 * rounding, (gap, rounding, moved)


@pytest.fixture
def compile_counter(monkeypatch):
    """Every `torch.compile` the trainer calls compiles with a backend that counts the graphs it gets."""
    counter, real = CompileCounter(), torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: real(model, **{**kwargs, "backend": counter}))
    torch._dynamo.reset()  # no guards or dynamic-shape decisions carried over from another test
    yield counter
    torch._dynamo.reset()


# method, arguments, how many times in 4 epochs it changes what the compiled frame sees
RESHAPES = [
    ("none", {}, 0),
    ("csg", {"slice": 16, "code_dim": 8}, 0),
    ("csg", {"slice": 16, "code_dim": 8, "generator": "binary"}, 0),
    ("filterprune", {"ratio": 0.5, "prune_at": 0.5}, 1),          # fewer filters: a new network
    ("lowrank", {"rank_ratio": 0.5, "mode": "decompose", "decompose_at": 0.5}, 1),  # factorised: a new network
    ("prune", {"sparsity": 0.5, "mode": "gradual"}, 1),          # masks hooked on once, then updated in place
    ("hashed", {}, 0), ("softshare", {}, 0), ("hypernet", {}, 0),
]


@pytest.mark.parametrize("method,args,changes", RESHAPES,
                         ids=[f"{m}-{a.get('generator', 'learned')}" if m == "csg" else m for m, a, _ in RESHAPES])
def test_a_compiled_run_compiles_once_per_network_shape(data_root, compile_counter, method, args, changes):
    # 80 images in batches of 32: two full batches and a last one of 16, as a real epoch ends
    cfg = RunConfig(arch="resnet20", method=method, method_args=args, epochs=4, batch_size=32, lr=0.05,
                    schedule="onecycle", train_subset=80, val_size=32, test_subset=32, precision="fp32",
                    compile=True)
    graphs_after_epoch = []
    result = train(cfg, str(data_root), device="cpu", on_epoch=lambda m: graphs_after_epoch.append(compile_counter.frame_count))
    assert len(result.history) == 4
    # one graph for the batch of 32 and one, with a dynamic batch dimension, for the batch of 16:
    # no graph breaks, and evaluation (eager) compiles nothing
    assert graphs_after_epoch[0] == 2, graphs_after_epoch
    new = [b - a for a, b in zip(graphs_after_epoch, graphs_after_epoch[1:])]
    assert sum(new) == changes and max(new) <= 1, graphs_after_epoch


@pytest.mark.parametrize("generator", ["learned", "binary"])
def test_compiled_csg_generates_each_kernel_once_per_forward_pass_as_eager_does(generator):
    """The generator's product rows computed in a pass, counted from the matrix products that torch
    runs: eager CSG computes every layer's slices in one product (compiled CSG traces one per layer,
    which the compiler may merge), and both compute each layer's slices exactly once per training
    forward pass."""
    torch.manual_seed(0)
    model, _ = build("resnet20", "csg", {"slice": 16, "code_dim": 8, "generator": generator})
    model.train()
    weight = generators(model)[0].weight
    code_rows = sum(layer.code.shape[0] for _, layer in generated_convs(model))
    x = torch.randn(4, 3, 32, 32)

    def product_rows_per_pass(forward, passes=2):
        forward(x).sum().backward()  # compiles, outside the count
        with torch.profiler.profile(record_shapes=True) as prof:
            for _ in range(passes):
                forward(x).sum().backward()
        # forward products: [rows, code_dim] @ [code_dim, S*S*k*k], the generator's weight transposed
        rows = [shapes[0][0] for e in prof.events() if e.name == "aten::mm" and len(shapes := e.input_shapes) == 2
                and list(shapes[1]) == [weight.shape[1], weight.shape[0]] and shapes[0][1] == weight.shape[1]]
        return sum(rows) / passes, len(rows) / passes

    eager_rows, eager_products = product_rows_per_pass(model)
    compiled_rows, _ = product_rows_per_pass(torch.compile(copy.deepcopy(model), backend="aot_eager"))
    assert eager_rows == compiled_rows == code_rows
    assert eager_products == 1

