"""The uncompressed network: the architecture as its builder makes it."""
from __future__ import annotations

from study.methods.base import Method, register


@register
class Plain(Method):
    name = "none"  # part of every plain run's RunConfig and hash: never renamed (shown as "plain")

    def build(self, arch, args, seed=0):
        return arch.build(num_classes=arch.num_classes)
