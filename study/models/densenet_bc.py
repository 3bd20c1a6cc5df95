"""DenseNet-BC for CIFAR (Huang et al. 2017), depth 40, in the layout of the authors' code.

The authors started from kuangliu's pytorch-cifar DenseNet and changed the end of the network:
the third transition keeps only its BatchNorm (`trans3.bn`), followed by ReLU and global average
pooling, and there is no separate final BatchNorm.  Module names follow their state dicts
(`conv1`, `dense{1,2,3}.{i}.{bn1,conv1,bn2,conv2}`, `trans{1,2,3}`, `linear`) so that their
checkpoints load after `study.authors.translate`.

Depth 40 with bottlenecks gives (40 - 4) / 6 = 6 bottleneck layers per dense block; the stem
has 2k channels and each transition halves the channel count (compression 0.5).

CSG (authors' policy): only the 3x3 conv of each bottleneck (`conv2`) is generated; the stem,
the 1x1 bottleneck and transition convs and the classifier stay ordinary.
"""
from __future__ import annotations

import functools
import math
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from study.models.registry import ArchSpec, register


class Bottleneck(nn.Module):
    """BN-ReLU-1x1 conv (4k) then BN-ReLU-3x3 conv (k); new features are concatenated first."""

    def __init__(self, in_planes: int, growth_rate: int):
        super().__init__()
        inner = 4 * growth_rate
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, inner, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, growth_rate, kernel_size=3, padding=1, bias=False)

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([out, x], 1)


class Transition(nn.Module):
    """BN-ReLU, then a 1x1 conv and 2x2 average pooling; the last one only BN-ReLU (pooling is
    done by the network's global average pool)."""

    def __init__(self, in_planes: int, out_planes: int | None):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, kernel_size=1, bias=False) if out_planes else None

    def forward(self, x):
        out = F.relu(self.bn(x))
        if self.conv is None:
            return out
        return F.avg_pool2d(self.conv(out), 2)


class DenseNetBC(nn.Module):
    def __init__(self, growth_rate: int, n_layers: int = 6, reduction: float = 0.5, num_classes: int = 10):
        super().__init__()
        planes = 2 * growth_rate
        self.conv1 = nn.Conv2d(3, planes, kernel_size=3, padding=1, bias=False)
        for stage in (1, 2, 3):
            layers = []
            for _ in range(n_layers):
                layers.append(Bottleneck(planes, growth_rate))
                planes += growth_rate
            setattr(self, f"dense{stage}", nn.Sequential(*layers))
            out_planes = int(math.floor(planes * reduction)) if stage < 3 else None
            setattr(self, f"trans{stage}", Transition(planes, out_planes))
            planes = out_planes or planes
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x):
        out = self.conv1(x)
        out = self.trans1(self.dense1(out))
        out = self.trans2(self.dense2(out))
        out = self.trans3(self.dense3(out))
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)  # = avg_pool2d(8) on 32x32 inputs
        return self.linear(out)


def densenet_bc(growth_rate: int, num_classes: int = 10, width: float = 1.0) -> DenseNetBC:
    """DenseNet-BC-40 with growth rate `growth_rate`; `width` scales the growth rate (width baseline)."""
    return DenseNetBC(max(1, round(growth_rate * width)), num_classes=num_classes)


_BOTTLENECK_3X3 = re.compile(r"^dense[123]\.\d+\.conv2$")


def authors_policy(name: str, conv: nn.Conv2d) -> bool:
    """The authors generate only each bottleneck's 3x3 conv."""
    return bool(_BOTTLENECK_3X3.match(name))


for _k, _plain, _csg in ((36, "1,542,682", "842,842"), (48, "2,733,130", "1,416,394")):
    register(ArchSpec(
        name=f"densenet_bc_k{_k}", build=functools.partial(densenet_bc, _k), task="cifar10",
        num_classes=10, input_size=(3, 32, 32), first_conv="conv1",
        notes=(f"DenseNet-BC-40, growth {_k}, authors' (kuangliu) layout; only each bottleneck's 3x3 conv "
               f"is generated (18 layers); {_plain} params plain, {_csg} with CSG 12x12x3x3 / 72")))
