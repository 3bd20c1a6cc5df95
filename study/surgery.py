"""Module surgery shared by CSG and the baselines: replace a submodule by its dotted name."""
from __future__ import annotations

import torch.nn as nn


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    """Put `module` at `name` (e.g. "layer1.0.conv2") inside `root`, in place of what is there."""
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)
