"""Width scaling (`--method width`): the same architecture with every stage's channels times `width`.

The architecture's own builder does the scaling (`arch.build(num_classes=..., width=...)`; the CIFAR
ResNets round each stage's width to the nearest integer, at least 1).  An architecture whose
builder takes no `width` is refused with a clear error rather than rebuilt by guesswork:
channel-count surgery on arbitrary graphs (concatenations, option-A padding shortcuts, grouped
convs) cannot be done generically without breaking shapes.

Every layer scales, stem and classifier included, so the budget count is `total`, matched within
2% (channel counts are integers, so the count moves in steps).
"""
from __future__ import annotations

import inspect

import torch

from study.accounting import unique_parameters
from study.methods import Method, register

from baselines import _common as C


def supports_width(arch) -> bool:
    try:
        params = inspect.signature(arch.build).parameters
    except (TypeError, ValueError):
        return False
    return "width" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


@register
class Width(Method):
    name = "width"
    knob = "width"
    count = "total"
    tolerance = 0.02
    defaults = {"width": 1.0}
    max_width = 64.0

    def args(self, given):
        args = super().args(given)
        try:
            args["width"] = float(args["width"])
        except (TypeError, ValueError):
            raise ValueError(f"{self.name}: width must be a positive number, got {args['width']!r}") from None
        if not args["width"] > 0:
            raise ValueError(f"{self.name}: width must be a positive number, got {args['width']!r}")
        return args

    def _check(self, arch):
        if not supports_width(arch):
            raise ValueError(f"width: width scaling is not supported for {arch.name} (its builder takes no width)")

    def build(self, arch, args, seed=0):
        self._check(arch)
        return C.tag(arch.build(num_classes=arch.num_classes, width=float(args["width"])), arch)

    def search(self, arch, args, target):
        self._check(arch)

        def count(w):
            with torch.no_grad():
                return unique_parameters(arch.build(num_classes=arch.num_classes, width=w))

        lo, hi = 1e-3, 1.0
        while count(hi) < target and hi < self.max_width:
            hi = min(self.max_width, hi * 2)
        w = C.search_monotone(self.name, "width", count, target, lo, hi, self.tolerance, iterations=30)
        return {**args, "width": C.shorten(count, w, lo)}

