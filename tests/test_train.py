"""The training loop on real CIFAR-10, its determinism, model selection and the LR schedules."""
from __future__ import annotations

import math

import pytest
import torch

from study.config import RunConfig
from study.env import resolve_precision
from study.train import lr_factor, make_optimizer, summarize, train

SMALL = dict(arch="resnet20", epochs=3, batch_size=128, lr=0.1, schedule="onecycle", warmup_epochs=0.5,
             nesterov=True, train_subset=1024, val_size=500, test_subset=256, precision="fp32")


@pytest.fixture(scope="module")
def trained(data_root):
    runs = {}
    for method, args in (("none", {}), ("csg", {"slice": 16, "code_dim": 32})):
        cfg = RunConfig(method=method, method_args=args, **SMALL)
        runs[method] = train(cfg, str(data_root), device="cpu")
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("method", ["none", "csg"])
def test_loss_falls_on_real_cifar(trained, method):
    result = trained[method]
    h = result.history
    assert [m["epoch"] for m in h] == [1, 2, 3]
    losses = [m["train_loss"] for m in h]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.1, losses
    assert losses[0] < 5  # not diverged
    # better than chance (10 %) on held-out images after 3 short epochs
    assert max(m["val_acc"] for m in h) > 14, h
    for m in h:
        assert 0 <= m["val_acc"] <= 100 and 0 <= m["test_acc"] <= 100 and m["epoch_seconds"] > 0
        assert {"train_loss", "train_acc", "lr", "val_loss", "test_loss"} <= m.keys()
    assert h[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # onecycle ends at zero
    assert result.summary == summarize(h)
    assert result.precision == "fp32"
    if method == "csg":
        assert result.args == {"slice": 16, "code_dim": 32, "layout": "contiguous", "generator": "learned",
                               "policy": "authors"}


@pytest.mark.slow
def test_same_seed_gives_identical_history(data_root):
    cfg = RunConfig(arch="resnet20", method="csg", method_args={"slice": 16, "code_dim": 8}, epochs=2,
                    batch_size=64, lr=0.05, schedule="onecycle", train_subset=256, val_size=500,
                    test_subset=200, seed=3, precision="fp32")

    def strip(history):
        return [{k: v for k, v in m.items() if k != "epoch_seconds"} for m in history]

    a = train(cfg, str(data_root), device="cpu")
    b = train(cfg, str(data_root), device="cpu")
    assert strip(a.history) == strip(b.history)  # bitwise: float equality of every metric
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    c = train(RunConfig(**{**cfg.to_dict(), "seed": 4}), str(data_root), device="cpu")
    assert strip(c.history) != strip(a.history)


def test_summarize_selects_on_validation():
    def row(epoch, val, test):
        return {"epoch": epoch, "val_acc": val, "test_acc": test, "epoch_seconds": 1.5}

    history = [row(1, 50.0, 48.0), row(2, 60.0, 55.0), row(3, 58.0, 61.0), row(4, 60.0, 57.0), row(5, 59.0, 56.0)]
    s = summarize(history)
    assert s["best_val_acc"] == 60.0 and s["best_val_epoch"] == 2  # ties go to the earlier epoch
    assert s["test_acc_at_best_val"] == 55.0
    assert s["best_test_acc"] == 61.0 and s["best_test_epoch"] == 3  # reported apart, for the paper
    assert s["final_test_acc"] == 56.0 and s["final_val_acc"] == 59.0
    assert s["train_seconds"] == pytest.approx(7.5)


def test_summarize_other_primary_metric():
    history = [{"epoch": 1, "val_miou": 0.2, "test_miou": 0.3, "epoch_seconds": 1},
               {"epoch": 2, "val_miou": 0.4, "test_miou": 0.1, "epoch_seconds": 1}]
    s = summarize(history, "miou")
    assert s["test_miou_at_best_val"] == 0.1 and s["best_test_miou"] == 0.3


# -- learning-rate schedules ---------------------------------------------------------------------
def _lrs(cfg, steps_per_epoch):
    model = torch.nn.Linear(2, 2)
    opt, sched = make_optimizer(model, cfg, steps_per_epoch, 0)
    out = []
    for _ in range(cfg.epochs * steps_per_epoch):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_step_schedule_multiplies_by_gamma_at_milestones():
    cfg = RunConfig(epochs=4, lr=0.2, schedule="step", milestones=(0.5, 0.75), gamma=0.1)
    lrs = _lrs(cfg, 10)
    assert lrs[0] == lrs[19] == pytest.approx(0.2)
    assert lrs[20] == lrs[29] == pytest.approx(0.02)
    assert lrs[30] == lrs[39] == pytest.approx(0.002)
    assert len(set(round(v, 12) for v in lrs)) == 3


def test_default_schedule_is_the_authors_protocol():
    cfg = RunConfig()
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay) == (200, 192, 0.05, 0.9, 5e-4)
    lr = {e: cfg.lr * lr_factor(cfg, e / cfg.epochs) for e in (0, 99, 100, 149, 150, 199)}
    assert lr[0] == lr[99] == pytest.approx(0.05)
    assert lr[100] == lr[149] == pytest.approx(0.005)
    assert lr[150] == lr[199] == pytest.approx(0.0005)


def test_onecycle_endpoints():
    cfg = RunConfig(epochs=4, lr=0.4, schedule="onecycle", warmup_epochs=1)
    assert lr_factor(cfg, 0.0) == 0.0
    assert lr_factor(cfg, 0.25) == pytest.approx(1.0)
    assert lr_factor(cfg, 0.125) == pytest.approx(0.5)
    assert lr_factor(cfg, 0.625) == pytest.approx(0.5)
    assert lr_factor(cfg, 1.0) == pytest.approx(0.0)
    lrs = _lrs(cfg, 10)
    assert lrs[0] == 0.0 and max(lrs) == pytest.approx(0.4) and lrs.index(max(lrs)) == 10
    assert lrs[-1] == pytest.approx(0.4 / 30)  # one step before the end of a linear decay to zero
    no_warm = RunConfig(epochs=4, lr=0.4, schedule="onecycle")
    assert lr_factor(no_warm, 0.0) == 1.0 and lr_factor(no_warm, 1.0) == 0.0


def test_cosine_endpoints():
    cfg = RunConfig(epochs=10, lr=1.0, schedule="cosine")
    assert lr_factor(cfg, 0.0) == pytest.approx(1.0)
    assert lr_factor(cfg, 0.5) == pytest.approx(0.5)
    assert lr_factor(cfg, 1.0) == pytest.approx(0.0, abs=1e-12)
    values = [lr_factor(cfg, p / 100) for p in range(101)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone decay


def test_optimizer_resumes_the_schedule_mid_way():
    cfg = RunConfig(epochs=4, lr=0.2, schedule="step", milestones=(0.5,), gamma=0.5)
    model = torch.nn.Linear(2, 2)
    opt, _ = make_optimizer(model, cfg, 10, 25)  # resumed after 2.5 epochs: past the milestone
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    assert opt.param_groups[0]["momentum"] == 0.9 and opt.param_groups[0]["weight_decay"] == 5e-4


def test_precision_resolution():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32"
    assert resolve_precision("auto", cpu) in ("fp32", "bf16")


def test_bad_configs_are_refused():
    for bad in (dict(schedule="linear"), dict(precision="fp8"), dict(epochs=0), dict(lr=0), dict(batch_size=-1)):
        with pytest.raises(ValueError):
            RunConfig(**bad)
