"""The fast recipe (issue 12): weight averaging, no-decay groups, alternating flips, flip TTA, and
what they must not change.

  * the averaged network is the one evaluated, reported, checkpointed and resumed, and a killed run
    resumes bitwise (CPU, one thread) with the average in the checkpoint;
  * flip TTA is the mean of the two views' softmax outputs, and `acc_tta` is its top-1;
  * the no-decay group holds exactly the BatchNorm and bias parameters (plus what a method exempts);
  * alternating flips flip every image the other way each epoch, and resume with the run;
  * pruning masks stay applied in the averaged network;
  * the new config fields leave the hashes of stored runs alone, and bad values are refused.
"""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

from conftest import REPO, Crash, without_timing
from grid_subprocess import DATA_ROOT, TINY, uri
from study import checkpoint, grid
from study.cli import main
from study.config import ADDED_LATER, RunConfig
from study.data import cifar as data
from study.methods import METHODS, build, get_method
from study.models import get_arch
from study.tasks.base import flip_tta_logits
from study.tasks import get_task
from study.env import resolve_precision
from study.train import autocast_for, make_optimizer, train

CPU = torch.device("cpu")
RECIPE_FIELDS = {"ema_decay": None, "no_decay_norm_bias": False, "flip": "random"}  # and their defaults


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Bitwise-reproducible CPU training needs a fixed thread count; one, on this shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _recipe_cfg(method: str = "none", method_args: dict | None = None, **overrides) -> RunConfig:
    """A tiny real-data run with the whole fast recipe switched on."""
    return RunConfig(**{"arch": "resnet20", "method": method, "method_args": method_args or {},
                        "epochs": 3, "batch_size": 64, "lr": 0.1, "momentum": 0.9, "nesterov": True,
                        "schedule": "onecycle", "warmup_epochs": 1, "label_smoothing": 0.1,
                        "train_subset": 512, "val_size": 256, "test_subset": 256,
                        "ema_decay": 0.99, "no_decay_norm_bias": True, "flip": "alternating", **overrides})


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


# -- 1. the averaged network is what is evaluated, checkpointed and resumed -----------------------
RESUMED = {  # method, its arguments, the epoch after which the first attempt is killed, and the
    # epochs the final average has seen (an average restarts when the network's tensors change)
    "plain": ("none", {}, 1, 3),
    "csg16x16": ("csg", {"slice": 16, "code_dim": 16}, 2, 3),
    # gradual pruning (start 0.1, end 0.5 of 3 epochs): masks appear at the start of epoch 2, which
    # starts a new average, so the checkpoint the run resumes from holds a pruned network and an
    # average of its last epoch
    "prune": ("prune", {"sparsity": 0.5}, 2, 2),
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_root):
    """Uninterrupted runs (with checkpoints), trained once per method and shared by the tests."""
    done = {}

    def get(key: str):
        if key not in done:
            method, args, _, _ = RESUMED[key]
            cfg = _recipe_cfg(method, args)
            folder = tmp_path_factory.mktemp(f"reference-{key}")
            done[key] = (cfg, train(cfg, data_root, folder), folder)
        return done[key]
    return get


@pytest.mark.slow
@pytest.mark.parametrize("key", RESUMED)
def test_killed_run_resumes_bitwise_with_its_weight_average(tmp_path, data_root, reference, key):
    cfg, uninterrupted, ref_dir = reference(key)
    kill_after = RESUMED[key][2]

    # the checkpoint carries the average, and the average is what the run returns
    last = checkpoint.load_latest(ref_dir)
    averaged_epochs = RESUMED[key][3]
    assert "average" in last and last["average"]["updates"] == averaged_epochs * 8  # 512 images / 64
    _assert_same_state(last["average"]["module"], uninterrupted.model.state_dict())
    live = last["model"]
    assert any(not torch.equal(live[k], v) for k, v in last["average"]["module"].items()
               if k in live and v.is_floating_point()), "the average equals the live weights: nothing tested"

    def killed(metrics):
        if metrics["epoch"] == kill_after:  # after the epoch's checkpoint is written
            raise Crash

    with pytest.raises(Crash):
        train(cfg, data_root, tmp_path, on_epoch=killed)
    assert checkpoint.candidates(tmp_path)[0].name.startswith(f"epoch{kill_after:04d}")
    resumed = train(cfg, data_root, tmp_path)

    assert without_timing(resumed.history) == without_timing(uninterrupted.history)  # bitwise: every metric of every epoch
    _assert_same_state(resumed.model.state_dict(), uninterrupted.model.state_dict())
    _assert_same_state(checkpoint.load_latest(tmp_path)["model"], live)  # the live network too


@pytest.mark.slow
def test_reported_metrics_are_the_averaged_networks(data_root, reference):
    cfg, result, ref_dir = reference("plain")
    task = get_task("cifar10")
    loaders = task.loaders(cfg, str(data_root), CPU)
    autocast = autocast_for(resolve_precision(cfg.precision, CPU), CPU)
    last = result.history[-1]

    test = task.evaluate(result.model, loaders.test, autocast, tta=True)
    val = task.evaluate(result.model, loaders.val, autocast)
    assert test["loss"] == last["test_loss"] and test["acc"] == last["test_acc"]
    assert test["acc_tta"] == last["test_acc_tta"]
    assert val["loss"] == last["val_loss"] and val["acc"] == last["val_acc"]
    assert result.summary["final_test_acc"] == last["test_acc"]
    assert result.summary["final_test_acc_tta"] == last["test_acc_tta"]

    # the live network of the same checkpoint scores differently: the figures are not the live one's
    arch, method = get_arch(cfg.arch), get_method(cfg.method)
    live = method.build(arch, result.args, seed=cfg.seed).to(memory_format=torch.channels_last)
    live.load_state_dict(checkpoint.load_latest(ref_dir)["model"])
    assert task.evaluate(live, loaders.test, autocast)["loss"] != last["test_loss"]


# -- 2. flip test-time augmentation -----------------------------------------------------------
@pytest.fixture(scope="module")
def judged_net(cifar):
    """A plain ResNet-20 with BatchNorm statistics from real images, so its predictions vary by image."""
    torch.manual_seed(0)
    model, _ = build("resnet20", "none")
    model.train()
    with torch.no_grad():
        for i in range(4):
            model(_norm(cifar.train_x[i * 128:(i + 1) * 128]))
    return model.eval()


def _norm(x_uint8: torch.Tensor) -> torch.Tensor:
    return data.normalize(x_uint8)


def _by_hand(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        single = model(x)
        mirrored = model(torch.flip(x, dims=[3]))  # left-right: the width axis of NCHW
    return single, (F.softmax(single.float(), dim=1) + F.softmax(mirrored.float(), dim=1)) / 2


def test_tta_is_the_mean_of_the_two_views_softmax(cifar, judged_net):
    x = _norm(cifar.test_x[:200])
    single, probs = _by_hand(judged_net, x)
    with torch.no_grad():
        out, tta = flip_tta_logits(judged_net, x)
    assert torch.allclose(out, single, atol=1e-6, rtol=0)
    assert torch.allclose(tta, probs, atol=1e-6, rtol=0)
    assert torch.allclose(tta.sum(1), torch.ones(200), atol=1e-5)
    # the mean of the logits is another thing (so the comparison above can tell them apart)
    with torch.no_grad():
        mean_logits = F.softmax((judged_net(x) + judged_net(x.flip(3))).float() / 2, 1)
    assert not torch.allclose(mean_logits, probs, atol=1e-6, rtol=0)


def test_evaluate_reports_tta_top1_beside_the_single_view(cifar, judged_net):
    n = 450  # batches of 200, the last one short
    x, y = cifar.test_x[:n], cifar.test_y[:n]
    single, probs = _by_hand(judged_net, _norm(x))
    assert (probs.argmax(1) != single.argmax(1)).any(), "TTA changes no prediction: nothing tested"
    loader = data.CifarLoader(x, y, 200, train=False)
    task = get_task("cifar10")

    with_tta = task.evaluate(judged_net, loader, tta=True)
    assert with_tta["acc"] == 100.0 * int((single.argmax(1) == y).sum()) / n
    assert with_tta["acc_tta"] == 100.0 * int((probs.argmax(1) == y).sum()) / n
    assert with_tta["loss"] == pytest.approx(float(F.cross_entropy(single, y)), rel=1e-5)

    without = task.evaluate(judged_net, loader)
    assert "acc_tta" not in without
    assert without["acc"] == with_tta["acc"] and without["loss"] == pytest.approx(with_tta["loss"], rel=1e-6)


# -- 3. weight-decay groups -------------------------------------------------------------------
NETWORKS = {
    "plain": ("none", {}),
    "csg16x72": ("csg", {"slice": 16, "code_dim": 72}),
    "hashed": ("hashed", {}),       # 1-D buckets are real weights: they decay
    "softshare": ("softshare", {}),  # its method may exempt its own coefficients
}


def _groups(opt) -> tuple[set[int], set[int], int]:
    """(ids decayed, ids not decayed, number of entries in all groups)."""
    decayed, free, entries = set(), set(), 0
    for g in opt.param_groups:
        ids = {id(p) for p in g["params"]}
        entries += len(g["params"])
        (free if g["weight_decay"] == 0 else decayed).update(ids)
    return decayed, free, entries


def _norm_and_bias_by_hand(model: nn.Module) -> set[int]:
    out = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if isinstance(module, nn.modules.batchnorm._BatchNorm) or name == "bias":
                out.add(id(p))
    return out


@pytest.mark.parametrize("net", NETWORKS)
@pytest.mark.parametrize("recipe", [True, False], ids=["no_decay_norm_bias", "everything_decays"])
def test_no_decay_group_is_exactly_norm_and_bias(net, recipe):
    method_name, args = NETWORKS[net]
    model, _ = build("resnet20", method_name, args)
    method = get_method(method_name)
    cfg = RunConfig(weight_decay=5e-4, no_decay_norm_bias=recipe, schedule="onecycle", epochs=2)
    exempt = method.no_weight_decay(model)
    opt, _ = make_optimizer(model, cfg, 10, 0, exempt)

    names = {id(p): n for n, p in model.named_parameters()}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    by_method = {id(p) for n, p in model.named_parameters() if n in exempt}
    expected_free = (_norm_and_bias_by_hand(model) & trainable if recipe else set()) | by_method
    decayed, free, entries = _groups(opt)

    assert entries == len(decayed | free) == len(trainable), "a parameter is missing or listed twice"
    assert not decayed & free
    assert free == expected_free, sorted(names[i] for i in free ^ expected_free)
    assert decayed == trainable - expected_free, sorted(names[i] for i in decayed ^ (trainable - expected_free))
    for g in opt.param_groups:
        assert g["weight_decay"] in (0.0, cfg.weight_decay)
    if recipe:
        assert len(free) > 0
    if net == "hashed":
        buckets = [p for n, p in model.named_parameters() if n.endswith("buckets")]
        assert buckets and all(p.dim() == 1 and id(p) in decayed for p in buckets)


@pytest.mark.parametrize("recipe", [True, False])
def test_a_methods_exempt_names_never_decay(recipe):
    model, _ = build("resnet20", "none")
    cfg = RunConfig(weight_decay=5e-4, no_decay_norm_bias=recipe, schedule="onecycle", epochs=2)
    opt, _ = make_optimizer(model, cfg, 10, 0, {"classifier.weight"})
    _, free, _ = _groups(opt)
    assert id(model.classifier.weight) in free
    assert (free == {id(model.classifier.weight)}) is (not recipe)


def test_the_trainer_passes_the_methods_exempt_names(monkeypatch, data_root):
    import study.train as trainer

    seen = []

    def spy(model, cfg, steps_per_epoch, steps_done, exempt=frozenset()):
        opt, sched = make_optimizer(model, cfg, steps_per_epoch, steps_done, exempt)
        seen.append((model, opt))
        raise Crash  # the groups are all this test needs: no training

    monkeypatch.setattr(METHODS["none"], "no_weight_decay", lambda model: {"classifier.weight"})
    monkeypatch.setattr(trainer, "make_optimizer", spy)
    with pytest.raises(Crash):
        train(_recipe_cfg(no_decay_norm_bias=False, train_subset=64, val_size=64, test_subset=64), data_root)
    model, opt = seen[0]
    assert _groups(opt)[1] == {id(model.classifier.weight)}


# -- 4. alternating flips ---------------------------------------------------------------------
def _flips_seen(monkeypatch, loader, n: int, epochs) -> dict[int, torch.Tensor]:
    """Each epoch's flip of every image (labels are the images' indices), read from crop_flip's arguments."""
    record = []
    real = data.crop_flip

    def spy(x, offsets, flips, pad=4):
        record.append(flips.clone())
        return real(x, offsets, flips, pad)

    monkeypatch.setattr(data, "crop_flip", spy)
    out = {}
    for epoch in epochs:
        loader.set_epoch(epoch)
        record.clear()
        flips = torch.empty(n, dtype=torch.bool)
        seen = torch.zeros(n, dtype=torch.bool)
        for (_, idx), f in zip(loader, record):
            flips[idx] = f
            seen[idx] = True
        assert seen.all() and len(record) == len(loader)
        out[epoch] = flips
    monkeypatch.setattr(data, "crop_flip", real)
    return out


def test_alternating_flips_each_image_the_other_way_every_epoch(monkeypatch, cifar):
    n = 2000
    x, ids = cifar.train_x[:n], torch.arange(n)
    loader = data.CifarLoader(x, ids, 256, train=True, seed=5, flip="alternating")
    flips = _flips_seen(monkeypatch, loader, n, range(5))

    assert 0.46 < flips[0].float().mean() < 0.54  # the first epoch's coins are fair
    for e in range(4):
        assert torch.equal(flips[e + 1], ~flips[e]), f"epoch {e + 1} does not flip every image the other way"

    # a rebuilt loader (a resumed run) flips as the uninterrupted one did in the epoch it is told
    again = data.CifarLoader(x, ids, 256, train=True, seed=5, flip="alternating")
    assert torch.equal(_flips_seen(monkeypatch, again, n, [3])[3], flips[3])
    other = data.CifarLoader(x, ids, 256, train=True, seed=6, flip="alternating")
    assert not torch.equal(_flips_seen(monkeypatch, other, n, [0])[0], flips[0])  # the seed draws the coins


def test_alternating_loader_resumes_bitwise(cifar):
    x, y = cifar.train_x[:300], cifar.train_y[:300]
    make = lambda: data.CifarLoader(x, y, 64, train=True, seed=2, flip="alternating",  # noqa: E731
                                     channels_last=True)
    first = make()
    states, epochs = [], []
    for e in range(3):
        first.set_epoch(e)
        states.append(first.generator.get_state())
        epochs.append(list(first))
    resumed = make()  # as train() does: the generator from the checkpoint, then set_epoch
    resumed.generator.set_state(states[2])
    resumed.set_epoch(2)
    for (xa, ya), (xb, yb) in zip(epochs[2], resumed, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_random_flips_draw_as_before(cifar):
    """flip: random keeps the draws of the loader before the recipe: order, offsets, then flips, all
    from the one generator, a fresh coin per image per epoch."""
    x, y = cifar.train_x[:300], cifar.train_y[:300]
    loader = data.CifarLoader(x, y, 128, train=True, seed=4, channels_last=True)
    g = torch.Generator().manual_seed(4)
    for epoch in range(2):
        loader.set_epoch(epoch)
        order = torch.randperm(300, generator=g)
        offsets = torch.randint(0, 9, (300, 2), generator=g)
        flips = torch.rand(300, generator=g) < 0.5
        got = list(loader)
        assert len(got) == 3
        for i, (xb, yb) in enumerate(got):
            idx = order[i * 128:(i + 1) * 128]
            want = data.normalize(data.crop_flip(x[idx], offsets[idx], flips[idx]))
            assert torch.equal(xb, want.contiguous(memory_format=torch.channels_last)) and torch.equal(yb, y[idx])


# -- 5. pruning masks in the average ----------------------------------------------------------
@pytest.mark.parametrize("schedule", [{"sparsity": 0.6},  # gradual, masks appear at an epoch start
                                      {"sparsity": 0.6, "every_steps": 2}],  # masks from the start
                         ids=["per_epoch", "every_steps"])
def test_averaged_network_keeps_the_live_masks(tmp_path, data_root, cifar, schedule):
    cfg = _recipe_cfg("prune", schedule, epochs=2, train_subset=256, val_size=256, test_subset=128)
    result = train(cfg, data_root, tmp_path)
    live = checkpoint.load_latest(tmp_path)["model"]
    masks = {k[:-len(".weight_mask")]: v for k, v in live.items() if k.endswith(".weight_mask")}
    assert masks and sum(int((m == 0).sum()) for m in masks.values()) > 0

    averaged = result.model
    with torch.no_grad():  # a forward pass refreshes pruned modules' `weight` from orig x mask
        averaged(_norm(cifar.test_x[:8]).contiguous(memory_format=torch.channels_last))
    for name, mask in masks.items():
        w = averaged.get_submodule(name).weight
        assert (w[mask == 0] == 0).all(), f"{name}: {int((w[mask == 0] != 0).sum())} weights the live mask " \
                                          "prunes are nonzero in the averaged network"
        assert (w[mask != 0] != 0).any()


# -- 6. config hashes -------------------------------------------------------------------------
def _hash_before_the_recipe(cfg: RunConfig) -> str:
    """RunConfig.hash as it was before the recipe's fields existed (commit d2bfab5)."""
    d = cfg.to_dict()
    d.pop("name")
    for key, default in RECIPE_FIELDS.items():
        assert d.pop(key) == default
    if d["image_size"] is None:
        d.pop("image_size")
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def test_recipe_fields_at_their_defaults_keep_the_stored_hashes():
    assert {k: ADDED_LATER[k] for k in RECIPE_FIELDS} == RECIPE_FIELDS
    quick = grid.load(REPO / "configs" / "quick.yaml")
    for cfg in quick.runs:
        assert cfg.hash() == _hash_before_the_recipe(cfg), cfg.name

    # the committed quick study holds every run of the grid, each under the key the grid gives it today
    with open(REPO / "results" / "quick" / "manifest.csv") as f:
        stored = {row["run_name"]: row["config_hash"] for row in csv.DictReader(f) if row["experiment"] == "quick"}
    assert stored == {c.name: c.hash() for c in quick.runs}


@pytest.mark.parametrize("change", [{"ema_decay": 0.99}, {"no_decay_norm_bias": True}, {"flip": "alternating"}])
def test_setting_a_recipe_field_changes_the_hash(change):
    base = RunConfig(arch="resnet20", epochs=10, schedule="onecycle")
    changed = RunConfig(**{**base.to_dict(), **change})
    assert changed.hash() != base.hash()
    assert RunConfig(**{**base.to_dict(), **{k: RECIPE_FIELDS[k] for k in change}}).hash() == base.hash()


def test_each_recipe_field_keys_differently():
    base = RunConfig().to_dict()
    hashes = {RunConfig(**{**base, **c}).hash() for c in
              ({}, {"ema_decay": 0.99}, {"ema_decay": 0.999}, {"no_decay_norm_bias": True}, {"flip": "alternating"},
               {"ema_decay": 0.99, "no_decay_norm_bias": True, "flip": "alternating"})}
    assert len(hashes) == 6


# -- 7. bad values are refused before training --------------------------------------------------
BAD = {
    "flip sideways": ({"flip": "sideways"}, "flip"),
    "ema_decay above 1": ({"ema_decay": 1.5}, "ema_decay"),
    "ema_decay of 1": ({"ema_decay": 1.0}, "ema_decay"),
    "ema_decay of 0": ({"ema_decay": 0.0}, "ema_decay"),
    "negative ema_decay": ({"ema_decay": -0.5}, "ema_decay"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_recipe_value_is_refused_with_one_line(tmp_path, capsys, case):
    run, needle = BAD[case]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"name": "bad", "defaults": TINY, "grid": [{"method": "none", **run}]}))
    code = main(["run", str(path), "--tracking-uri", uri(tmp_path), "--output", str(tmp_path / "out"),
                 "--data-root", DATA_ROOT])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert needle in lines[0], lines[0]
    assert not (tmp_path / "out" / "checkpoints").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("value", ["yes", "false", 1])
def test_no_decay_norm_bias_must_be_a_boolean(tmp_path, value):
    """A string is truthy: `no_decay_norm_bias: "false"` would silently switch the recipe on (under a
    hash of its own).  The grid must refuse it, as it refuses every other bad value, before training."""
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"name": "bad", "defaults": TINY,
                                    "grid": [{"method": "none", "no_decay_norm_bias": value}]}))
    with pytest.raises(grid.GridError, match="no_decay_norm_bias"):
        grid.load(path)
