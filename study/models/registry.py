"""The architecture registry: an `ArchSpec` per name, registered by each architecture's own file.

An `ArchSpec` says how to build a network, what it is trained on and which conv is its stem.  How CSG
applies to it (which convs the authors generated, their init) is CSG's recipe, in
`study/methods/csg.py`.  Nothing here is a global knob: slice size and code dimension always arrive
as arguments (`study.csg.CSGSpec`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn


@dataclass(frozen=True)
class ArchSpec:
    name: str
    build: Callable[..., nn.Module]          # build(num_classes=..., width=...) -> nn.Module
    task: str                                # 'cifar10' | 'imagenet' | 'voc'
    num_classes: int
    input_size: tuple[int, int, int]         # C, H, W of one image, for FLOP counting
    first_conv: str                          # the stem; never generated or compressed
    notes: str = ""


ARCHS: dict[str, ArchSpec] = {}


def register(spec: ArchSpec) -> ArchSpec:
    ARCHS[spec.name] = spec
    return spec


def get_arch(name: str) -> ArchSpec:
    try:
        return ARCHS[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; choose from {', '.join(ARCHS)}") from None
