"""The model zoo: one architecture per file, one registry entry per builder.

An `ArchSpec` says how to build a network and how CSG applies to it (which convs the authors
generated, which conv is the stem, what init they used).  Nothing here is a global knob: slice
size and code dimension always arrive as arguments (`study.csg.CSGSpec`).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn

from study.models import cifar_resnet


@dataclass(frozen=True)
class ArchSpec:
    name: str
    build: Callable[..., nn.Module]          # build(num_classes=..., width=...) -> nn.Module
    task: str                                # 'cifar10' | 'imagenet' | 'voc'
    num_classes: int
    input_size: tuple[int, int, int]         # C, H, W of one image, for FLOP counting
    first_conv: str                          # the stem; never generated
    authors_policy: Callable[[str, nn.Conv2d], bool]
    csg_kernel_size: int = 3                 # 1 where the authors generate 1x1 convs
    csg_init: str = "linear"                 # 'kaiming' only for the authors' CIFAR ResNets
    code_mean: float = 0.0
    # authors' state-dict names of the codes -> our module names (see study/authors.py)
    authors_code_names: dict[str, str] = field(default_factory=dict)
    notes: str = ""


ARCHS: dict[str, ArchSpec] = {}


def register(spec: ArchSpec) -> ArchSpec:
    ARCHS[spec.name] = spec
    return spec


for _depth in (20, 32, 44, 56, 110):
    register(ArchSpec(
        name=f"resnet{_depth}", build=functools.partial(cifar_resnet.cifar_resnet, _depth), task="cifar10",
        num_classes=10, input_size=(3, 32, 32), first_conv="conv_1_3x3",
        authors_policy=cifar_resnet.authors_policy, csg_kernel_size=3, csg_init="kaiming", code_mean=0.001,
        authors_code_names={"code": "conv_a.code", "code2": "conv_b.code"},
        notes="every 3x3 conv inside the residual blocks is generated"))


def get_arch(name: str) -> ArchSpec:
    try:
        return ARCHS[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; choose from {', '.join(ARCHS)}") from None


# Other architectures register themselves on import; keep this list in the order of the paper.
from study.models import _more  # noqa: E402,F401
