"""Fair baselines (issue 13, part 3): soft sharing's undecayed coefficients, hash seeds from the run
seed, the storage cost of a pruned network, and the faithful variants (Li et al.'s filter pruning,
Kim et al.'s decomposition, AGP every dt steps) with the old behaviour, and config hash, as default."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.prune as tprune

from study import accounting, methods
from study.config import RunConfig
from study.models import get_arch
from study.train import make_optimizer, train

from baselines import hashed as H
from baselines import lowrank as LR
from baselines import softshare as SS

ARCH = get_arch("resnet20")
TINY = dict(arch="resnet20", epochs=5, batch_size=64, lr=0.05, schedule="onecycle", warmup_epochs=0.5,
            train_subset=256, val_size=100, test_subset=100, precision="fp32", channels_last=False)


def method(name):
    return methods.get_method(name)


def batches(n, size=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 32, 32, generator=g), torch.randint(0, 10, (size,), generator=g)) for _ in range(n)]


def _one_step(model, opt, epoch: int) -> torch.Tensor:
    """One SGD step on the epoch's batch, as the trainer takes it; returns the loss."""
    for x, y in batches(1, seed=epoch):
        opt.zero_grad()
        loss = F.cross_entropy(model.train()(x), y)
        loss.backward()
        opt.step()
    return loss


def masks(model):
    return {n: m.weight_mask.detach().clone() for n, m in model.named_modules() if hasattr(m, "weight_mask")}


def sparsity(model):
    ks = masks(model).values()
    return sum(int((k == 0).sum()) for k in ks) / sum(k.numel() for k in ks)


# -- hashes of configs that do not name the new arguments -------------------------------------------
@pytest.mark.parametrize("name, before", [
    ("prune", {"sparsity": 0.5, "mode": "gradual", "prune_at": 0.5, "start": 0.1, "end": 0.5,
               "layers": "authors", "linear": False}),
    ("filterprune", {"ratio": 0.3, "prune_at": 0.5, "layers": "authors"}),
    ("lowrank", {"rank_ratio": 0.5, "mode": "scratch", "decompose_at": 0.5, "layers": "authors"}),
])
def test_unnamed_variant_arguments_keep_the_config_hash(name, before):
    """The resolved args of a grid that names no new argument are what they were, so is the hash."""
    m = method(name)
    assert m.args({}) == before
    assert RunConfig(method=name, method_args=m.args({}), seed=1).hash() == \
        RunConfig(method=name, method_args=before, seed=1).hash()
    named = {"prune": {"every_steps": 50}, "filterprune": {"protocol": "li"}, "lowrank": {"protocol": "kim"}}[name]
    assert RunConfig(method=name, method_args=m.args(named)).hash() != RunConfig(method=name, method_args=before).hash()


def test_variants_are_labelled():
    labels = {method(n).variant(method(n).args(a)) for n, a in (
        ("prune", {}), ("prune", {"every_steps": 50}), ("prune", {"mode": "oneshot"}),
        ("filterprune", {}), ("filterprune", {"protocol": "li"}),
        ("lowrank", {}), ("lowrank", {"mode": "decompose"}), ("lowrank", {"protocol": "kim"}))}
    assert len(labels) == 8
    assert "Li et al." in method("filterprune").variant(method("filterprune").args({"protocol": "li"}))
    assert "Kim et al." in method("lowrank").variant(method("lowrank").args({"protocol": "kim"}))
    assert "50 steps" in method("prune").variant(method("prune").args({"every_steps": 50}))


# -- soft sharing -----------------------------------------------------------------------------------
def test_softshare_coefficients_are_never_decayed():
    m = method("softshare")
    model = m.build(ARCH, m.args({"templates": 2}))
    names = m.no_weight_decay(model)
    params = dict(model.named_parameters())
    coefficients = {n for n, mod in model.named_modules() if isinstance(mod, SS.SharedConv2d)}
    assert len(coefficients) == 16 and names == {f"{n}.coefficients" for n in coefficients}
    assert names <= set(params) and not any("templates" in n for n in names)
    # the trainer's optimiser: coefficients in a group without decay, templates decayed
    cfg = RunConfig(method="softshare", weight_decay=5e-4, epochs=1)
    opt, _ = make_optimizer(model, cfg, 10, 0, names)
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert all(decay_of[id(params[n])] == 0 for n in names)
    assert all(decay_of[id(b.templates)] == 5e-4 for b in model.softshare_banks)
    # the old behaviour, on request, and a hash of its own
    old = m.args({"templates": 2, "decay_coefficients": True})
    assert m.no_weight_decay(m.build(ARCH, old)) == set()
    assert RunConfig(method="softshare", method_args=old).hash() != \
        RunConfig(method="softshare", method_args=m.args({"templates": 2})).hash()
    # other methods exempt nothing
    assert method("prune").no_weight_decay(method("prune").build(ARCH, method("prune").args({}))) == set()


# -- HashedNets -------------------------------------------------------------------------------------
def test_hash_seed_follows_the_run_seed():
    m = method("hashed")
    args = m.args({"compression": 0.1})
    assert args["hash_seed"] == "run"
    x = torch.randn(2, 3, 32, 32)

    def out(seed, a=args, state=None):
        model = m.build(ARCH, a, seed=seed)
        if state is not None:
            model.load_state_dict(state)  # the same bucket values and every other weight
        return model.eval()(x), model

    y0, model0 = out(0)
    state = model0.state_dict()
    assert torch.equal(out(0, state=state)[0], y0)             # a seed regenerates its own hashes
    assert not torch.allclose(out(1, state=state)[0], y0)      # another seed draws other hashes
    k0 = next(mod for mod in model0.modules() if isinstance(mod, H.HashedConv2d)).kernel()
    k1 = next(mod for mod in out(1, state=state)[1].modules() if isinstance(mod, H.HashedConv2d)).kernel()
    assert not torch.equal(k0, k1)
    # an explicit hash seed fixes the hashes across run seeds; seed 0 under the default is hash_seed 0
    fixed = m.args({"compression": 0.1, "hash_seed": 0})
    assert torch.equal(out(1, fixed, state)[0], y0) and torch.equal(out(5, fixed, state)[0], y0)
    with pytest.raises(ValueError, match="hash_seed"):
        m.args({"hash_seed": "yes"})


# -- storage of a pruned network ----------------------------------------------------------------------
class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(10, 10, bias=False)   # 100 float32 weights
        self.bn = nn.BatchNorm1d(10)              # 4 x 10 float32 + an int64 counter: 168 bytes


@pytest.mark.parametrize("zeros, expect, index", [
    (None, 400 + 168, 0),        # not pruned: dense
    (90, 40 + 10 + 168, 10),     # 10 left: 10 values + 10 one-byte indices (a bitmap would cost 13)
    (50, 200 + 13 + 168, 13),    # 50 left: 50 values + a 100-bit bitmap (indices would cost 50)
    (2, 400 + 168, 0),           # 98 left: dense is cheapest
])
def test_sparse_storage_on_a_tiny_known_case(zeros, expect, index):
    model = Tiny()
    with torch.no_grad():
        model.fc.weight.copy_(torch.arange(1, 101, dtype=torch.float32).reshape(10, 10))
    if zeros is not None:
        mask = torch.ones(100)
        mask[torch.randperm(100, generator=torch.Generator().manual_seed(0))[:zeros]] = 0
        tprune.custom_from_mask(model.fc, "weight", mask.reshape(10, 10))
    counts = accounting.account(model)
    assert counts["bytes_sparse"] == expect and counts["bytes_sparse_index"] == index
    assert counts["nonzero"] == 100 - (zeros or 0) + 10  # + 10 BN weights (ones; biases are 0): unchanged
    assert accounting.sparse_tensor_bytes(100, 10, 4) == (50, 10)


def test_sparse_storage_of_pruned_and_unpruned_networks():
    prune = method("prune")
    args = prune.args({"sparsity": 0.9, "mode": "oneshot"})
    dense = prune.build(ARCH, args)
    before = accounting.account(dense)
    raw = sum(v.numel() * v.element_size() for v in dense.state_dict().values())
    assert before["bytes_sparse"] == raw and before["bytes_sparse_index"] == 0
    pruned = prune.final_model(dense, args, epochs=10)
    after = accounting.account(pruned)
    assert {k: after[k] for k in accounting.COUNTS} == accounting.count_parameters(pruned)
    assert after["bytes_on_disk"] == accounting.bytes_on_disk(pruned)
    layers = [(m.weight_mask.numel(), int(m.weight_mask.sum())) for m in pruned.modules() if hasattr(m, "weight_mask")]
    assert sum(left for _, left in layers) == round(0.1 * sum(n for n, _ in layers))
    # tensors of 2,304..36,864 entries (2-byte indices) with one global threshold: a layer left with
    # under 1/16 of its weights is cheaper as an index list, one with more as a bitmap
    where = [min(2 * left, (n + 7) // 8) for n, left in layers]
    assert {2 * left < (n + 7) // 8 for n, left in layers} == {True, False}  # both encodings occur here
    assert after["bytes_sparse_index"] == sum(where)
    assert after["bytes_sparse"] == raw - sum(4 * n for n, _ in layers) + sum(4 * left for _, left in layers) + sum(where)
    assert after["bytes_sparse"] < 0.3 * raw
    fp = method("filterprune")   # structured: a smaller dense network, nothing to index
    small = fp.final_model(fp.build(ARCH, fp.args({"ratio": 0.5})), fp.args({"ratio": 0.5}), epochs=10)
    assert accounting.account(small)["bytes_sparse_index"] == 0


# -- AGP every dt steps ------------------------------------------------------------------------------
def test_agp_updates_masks_every_dt_steps_and_they_stay_applied():
    m = method("prune")
    dt, total, epochs = 5, 40, 4
    args = m.args({"sparsity": 0.8, "mode": "gradual", "start": 0.1, "end": 0.6, "every_steps": dt})
    model = m.build(ARCH, args)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)  # before any pruning
    t0, n = 4, 4  # round(0.1 * 40); round((24 - 4) / 5) updates after t0
    expected = {t0 + k * dt: 0.8 * (1 - (1 - k / n) ** 3) for k in range(n + 1)}
    previous, changed_at = masks(model), []
    model.train()
    for step, (x, y) in enumerate(batches(total), start=1):
        if (step - 1) % (total // epochs) == 0:  # the trainer's epoch starts change nothing in between
            assert m.on_epoch_start(model, args, (step - 1) // (total // epochs), epochs) is model
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        m.on_step(model, args, step, total)
        now = masks(model)
        if any(not torch.equal(now[k], previous[k]) for k in now):
            changed_at.append(step)
            assert all(torch.all(now[k][previous[k] == 0] == 0) for k in now)  # masks only grow
        if step in expected:
            assert sparsity(model) == pytest.approx(expected[step], abs=1e-4)
        for name, mod in model.named_modules():  # pruned weights stay zero through every step
            if name in now:
                assert torch.all((mod.weight_orig * mod.weight_mask)[now[name] == 0] == 0)
        previous = now
    assert changed_at == [9, 14, 19, 24]
    assert sparsity(model) == pytest.approx(0.8, abs=1e-4)
    counts = accounting.count_parameters(model)
    assert counts["nonzero"] <= m.counted(model, ARCH, args) and counts["total"] == 269_722
    # a checkpoint of it loads into a rebuilt model, masks and all
    fresh = m.restore(m.build(ARCH, args), args, m.structure(model))
    fresh.load_state_dict(model.state_dict(), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(masks(fresh).values(), masks(model).values()))
    with pytest.raises(ValueError, match="every_steps"):
        m.args({"mode": "oneshot", "every_steps": 10})
    with pytest.raises(ValueError, match="every_steps"):
        m.args({"every_steps": 0})


@pytest.mark.slow
def test_agp_every_dt_steps_in_the_trainer(data_root):
    m = method("prune")
    cfg = RunConfig(method="prune", method_args=m.args({"sparsity": 0.7, "start": 0.0, "end": 0.5,
                                                        "every_steps": 2}), **{**TINY, "epochs": 3})
    result = train(cfg, str(data_root), device="cpu")
    assert len(result.history) == 3 and all(h["train_loss"] == h["train_loss"] for h in result.history)
    assert sparsity(result.model) == pytest.approx(0.7, abs=1e-4)


# -- Li et al.'s filter pruning and Kim et al.'s decomposition --------------------------------------------
def test_li_prunes_the_trained_network_at_the_stated_epoch_and_retrains():
    m = method("filterprune")
    args = m.args({"ratio": 0.5, "protocol": "li"})
    assert args["prune_at"] == 0.8 and m.args({"protocol": "li", "prune_at": 0.6})["prune_at"] == 0.6
    model = m.build(ARCH, args)
    dense_total = accounting.count_parameters(model)["total"]
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    changed = []
    for epoch in range(10):
        new = m.on_epoch_start(model, args, epoch, 10)
        if new is not model:
            changed.append(epoch)
            model = new
            opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        before = [p.detach().clone() for p in model.parameters()]
        assert torch.isfinite(_one_step(model, opt, epoch))
        assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # it trains on
    assert changed == [8]  # round(0.8 * 10): eight dense epochs, two of retraining
    assert accounting.count_parameters(model)["total"] == m.counted(m.build(ARCH, args), ARCH, args) < dense_total
    # at least one dense epoch and one retraining epoch, however short the run
    assert m.prune_epoch(m.args({"protocol": "li", "prune_at": 0.0}), 10) == 1
    assert m.prune_epoch(args, 2) == 1 and m.prune_epoch(args, 1) == 0


def test_kim_decomposes_the_trained_network_at_the_stated_epoch_and_fine_tunes():
    m = method("lowrank")
    args = m.args({"rank_ratio": 0.5, "protocol": "kim"})
    assert args["mode"] == "decompose" and args["decompose_at"] == 0.8
    with pytest.raises(ValueError, match="kim"):
        m.args({"protocol": "kim", "mode": "scratch"})
    model = m.build(ARCH, args)
    assert not any(isinstance(mod, LR.Tucker2Conv) for mod in model.modules())  # trains dense first
    changed = []
    for epoch in range(5):
        trained = {n: mod.weight.detach().clone() for n, mod in model.named_modules() if type(mod) is nn.Conv2d}
        new = m.on_epoch_start(model, args, epoch, 5)
        if new is not model:
            changed.append(epoch)
            for name, layer in new.named_modules():  # the factors are those of the trained weights
                if isinstance(layer, LR.Tucker2Conv):
                    w = LR.reconstruct(layer.reduce.weight, layer.core.weight, layer.expand.weight)
                    r = LR.reconstruct(*LR.tucker2(trained[name], *layer.ranks))
                    assert torch.allclose(w, r, atol=1e-5)
            model = new
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        assert torch.isfinite(_one_step(model, opt, epoch))
    assert changed == [4]
    assert accounting.count_parameters(model)["total"] == m.counted(m.build(ARCH, args), ARCH, args)


@pytest.mark.slow
@pytest.mark.parametrize("name, args, at", [("filterprune", {"ratio": 0.5, "protocol": "li"}, 4),
                                            ("lowrank", {"rank_ratio": 0.5, "protocol": "kim"}, 4)])
def test_variants_in_the_trainer(data_root, monkeypatch, name, args, at):
    """Through study.train: the network changes at the stated epoch and training goes on after it."""
    m = method(name)
    seen = []
    original = type(m).on_epoch_start

    def spy(self, model, a, epoch, epochs):
        new = original(self, model, a, epoch, epochs)
        seen.append((epoch, new is not model))
        return new

    monkeypatch.setattr(type(m), "on_epoch_start", spy)
    cfg = RunConfig(method=name, method_args=m.args(args), **TINY)
    result = train(cfg, str(data_root), device="cpu")
    assert [e for e, changed in seen if changed] == [at]  # round(0.8 * 5)
    assert len(result.history) == 5 and all(h["train_loss"] == h["train_loss"] for h in result.history)
    final = accounting.count_parameters(result.model)["total"]
    assert final == m.counted(m.build(ARCH, m.args(args)), ARCH, m.args(args)) < 269_722
