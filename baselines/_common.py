"""Helpers the baseline methods share: which layers a method touches, where a new module goes, and budget search.

Every baseline walks an ordinary `nn.Module` tree, so it works on any architecture of the zoo.  The
layers a method compresses are chosen by its `layers` argument:

  authors   the convs CSG converts under the authors' policy (`study.methods.csg.csg_plan(arch).policy`):
            on CIFAR ResNets every 3x3 conv inside the residual blocks.  The default, so that a baseline
            and CSG compress the same layers at a matched budget.
  eligible  every ungrouped conv except the stem (`ArchSpec.first_conv`).

Never touched: the stem conv, depthwise/grouped convs, BatchNorm, and (unless a method says
otherwise) the classifier.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
import torch.nn as nn

from study.methods import BudgetError
from study.csg import all_eligible
from study.methods.csg import select

LAYER_SETS = ("authors", "eligible")


# -- argument checking ----------------------------------------------------------------------------
def check_choice(method: str, key: str, value, choices: Iterable) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{method}: {key} must be one of {', '.join(map(str, choices))}, got {value!r}")


def check_fraction(method: str, key: str, value, lo: float = 0.0, hi: float = 1.0, *,
                   lo_open: bool = False, hi_open: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{method}: {key} must be a number, got {value!r}") from None
    bad = (v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi) or math.isnan(v))
    if bad:
        raise ValueError(f"{method}: {key} must lie in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}, "
                         f"got {value!r}")
    return v


def omit_at(args: dict, unnamed: dict) -> dict:
    """`args` without the arguments that sit at the value in `unnamed`.

    An argument added to a method after runs were made is left out of its resolved arguments while
    it keeps the behaviour those runs had, so a grid that does not name it keeps the config hash it
    had before the argument existed (the method args are part of `RunConfig.hash`).  Read such an
    argument with `args.get(key, unnamed[key])`.
    """
    return {k: v for k, v in args.items() if not (k in unnamed and type(v) is type(unnamed[k]) and v == unnamed[k])}


def epoch_at(fraction: float, epochs: int) -> int:
    """The 0-based epoch at whose start an event scheduled at `fraction` of training happens."""
    return min(epochs, max(0, round(float(fraction) * epochs)))


# -- layer selection ------------------------------------------------------------------------------
def policy(arch, layers: str) -> Callable[[str, nn.Conv2d], bool]:
    """`eligible`: `study.csg.all_eligible`; `authors`: those of them CSG's authors' policy converts."""
    check_choice("layers", "layers", layers, LAYER_SETS)
    eligible = all_eligible(arch.first_conv)
    if layers == "authors":
        authors = select(arch, "authors")
        return lambda name, conv: eligible(name, conv) and authors(name, conv)
    return eligible


def select_convs(model: nn.Module, arch, layers: str, kernel_sizes: tuple[int, ...] | None = None
                 ) -> list[tuple[str, nn.Conv2d]]:
    """The plain `nn.Conv2d`s (exact type: never a method's own conv) a method compresses, in module order."""
    chosen = policy(arch, layers)
    out = []
    for name, m in model.named_modules():
        if type(m) is nn.Conv2d and chosen(name, m):
            if kernel_sizes is None or m.kernel_size[0] in kernel_sizes:
                out.append((name, m))
    return out


def require(method: str, arch, convs: list, what: str = "convolution") -> None:
    if not convs:
        raise ValueError(f"{method}: no {what} of {arch.name} is selected for compression")


# -- which architecture a model is -----------------------------------------------------------------
def tag(model: nn.Module, arch) -> nn.Module:
    """Record the zoo name on a model a baseline built: `on_epoch_start` is given no arch."""
    model.study_arch = arch.name
    return model


def arch_of(model: nn.Module, method: str):
    from study.models import get_arch

    name = getattr(model, "study_arch", None)
    if name is None:
        raise ValueError(f"{method}: this model was not built by the method's build(); it has no study_arch tag")
    return get_arch(name)


# -- module surgery -------------------------------------------------------------------------------
def like(new: nn.Module, old_weight: torch.Tensor) -> nn.Module:
    """Put a freshly made module on `old_weight`'s device and dtype (and channels-last if it was)."""
    new = new.to(device=old_weight.device, dtype=old_weight.dtype)
    if old_weight.dim() == 4 and not old_weight.is_contiguous() and \
            old_weight.is_contiguous(memory_format=torch.channels_last):
        new = new.to(memory_format=torch.channels_last)
    return new


def skeleton(arch) -> nn.Module:
    """A plain model of `arch` for reading shapes and counting, built without autograd."""
    with torch.no_grad():
        return arch.build(num_classes=arch.num_classes)


def apportion(shares: list[float], total: int | None = None, minimum: int = 0,
              maximum: list[int] | None = None) -> list[int]:
    """Integers near `shares` summing to `total` (default: round(sum(shares))), by largest remainder.

    A uniform ratio applied layer by layer moves every same-sized layer one step at once, which
    makes the parameter count a coarse staircase (on ResNet-20 a low-rank ratio cannot land within
    1% of CSG's 176,698).  Apportioning the rounded total instead keeps every layer within one unit
    of its exact share while the total moves one unit at a time.  Ties go to the earlier layer.
    """
    if total is None:
        total = round(sum(shares))
    base = [math.floor(s) for s in shares]
    left = total - sum(base)
    order = sorted(range(len(shares)), key=lambda i: (-(shares[i] - base[i]), i))
    for i in order[:max(0, left)]:
        base[i] += 1
    out = [max(minimum, b) for b in base]
    if maximum is not None:
        out = [min(b, m) for b, m in zip(out, maximum)]
    return out


# -- budget search --------------------------------------------------------------------------------
def search_monotone(name: str, knob: str, count: Callable[[float], int], target: int, lo: float, hi: float,
                    tolerance: float, *, integer: bool = False, iterations: int = 60,
                    fmt: Callable[[float], str] = lambda v: f"{v:.6g}") -> float:
    """Knob value in [lo, hi] whose count (a monotone step function of the knob, rising or falling)
    is closest to `target`.

    Bisects for the step where the count crosses the target and keeps the closer side.  Raises a
    one-line BudgetError naming the method, the target and the smallest reachable count when the
    target is out of range or no step lands within tolerance.
    """
    c_lo, c_hi = count(lo), count(hi)
    (k_min, c_min), (k_max, c_max) = sorted([(lo, c_lo), (hi, c_hi)], key=lambda kc: kc[1])
    if target < c_min * (1 - tolerance) or target > c_max * (1 + tolerance):
        raise BudgetError(f"{name}: target {target} is not reachable; smallest reachable count is {c_min} "
                          f"({knob}={fmt(k_min)}), largest {c_max} ({knob}={fmt(k_max)})")
    below, above = k_min, k_max  # count(below) < target <= count(above), unless the target is at an end
    if c_min >= target:
        above = below
    elif c_max < target:
        below = above
    for _ in range(iterations):
        if below == above or (integer and abs(above - below) <= 1):
            break
        mid = (below + above) // 2 if integer else (below + above) / 2
        if mid in (below, above):
            break
        if count(mid) >= target:
            above = mid
        else:
            below = mid
    best = min((below, above), key=lambda v: abs(count(v) - target))
    got = count(best)
    if abs(got - target) > tolerance * target:
        raise BudgetError(f"{name}: target {target} is not reachable within {tolerance:.0%} (nearest counts "
                          f"{count(below)} and {count(above)}); smallest reachable count is {c_min} "
                          f"({knob}={fmt(k_min)})")
    return best


def shorten(count: Callable[[float], int], value: float, lo: float = 0.0, hi: float = math.inf) -> float:
    """The shortest decimal in [lo, hi] with the same count as `value` (readable knobs in run names)."""
    target = count(value)
    for digits in range(1, 16):
        short = round(value, digits)
        if lo <= short <= hi and count(short) == target:
            return short
    return value
