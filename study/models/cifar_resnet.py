"""CIFAR ResNets (He et al. 2016, section 4.2) with option-A shortcuts.

Module names follow the authors' code (`conv_1_3x3`, `stage_k`, `conv_a`/`conv_b`, `classifier`),
so their released state dicts load after a mechanical renaming (see `authors.py`).
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from study.models.registry import ArchSpec, register


class ShortcutA(nn.Module):
    """Option A: subsample by `stride` and pad the new channels with zeros (no parameters)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.stride, self.extra = stride, out_planes - in_planes

    def forward(self, x):
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv_a = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(planes)
        self.conv_b = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(planes)
        self.downsample = ShortcutA(in_planes, planes, stride) if stride != 1 or in_planes != planes else None

    def forward(self, x):
        out = F.relu(self.bn_a(self.conv_a(x)))
        out = self.bn_b(self.conv_b(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks = (depth - 2) // 6
        self.conv_1_3x3 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn_1 = nn.BatchNorm2d(widths[0])
        in_planes, stages = widths[0], []
        for i, planes in enumerate(widths):
            layers = []
            for b in range(blocks):
                layers.append(BasicBlock(in_planes, planes, stride=2 if (i > 0 and b == 0) else 1))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.stage_1, self.stage_2, self.stage_3 = stages
        self.classifier = nn.Linear(widths[2], num_classes)
        self._init_weights()

    def _init_weights(self):
        # The authors' init: convs N(0, sqrt(2 / (k*k*C_out))), BN (1, 0), classifier Kaiming normal.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = F.relu(self.bn_1(self.conv_1_3x3(x)))
        x = self.stage_3(self.stage_2(self.stage_1(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(x)


def cifar_resnet(depth: int, num_classes: int = 10, width: float = 1.0) -> CifarResNet:
    """`width` scales every stage's channels (the width-scaling baseline); 1.0 is the paper's net."""
    widths = tuple(max(1, round(w * width)) for w in (16, 32, 64))
    return CifarResNet(depth, num_classes, widths)


def authors_policy(name: str, conv: nn.Conv2d) -> bool:
    """The authors convert every 3x3 conv inside the residual blocks."""
    return name.startswith("stage_")


for _depth in (20, 32, 44, 56, 110):
    register(ArchSpec(
        name=f"resnet{_depth}", build=functools.partial(cifar_resnet, _depth), task="cifar10",
        num_classes=10, input_size=(3, 32, 32), first_conv="conv_1_3x3",
        notes="every 3x3 conv inside the residual blocks is generated"))
