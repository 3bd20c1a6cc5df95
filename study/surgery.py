"""Module surgery shared by CSG and the baselines: replace or remove a submodule by its dotted name."""
from __future__ import annotations

import torch.nn as nn


def _parent(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    """(the module that holds `name`, e.g. "layer1.0.conv2", inside `root`; the last part of the name)."""
    parent, _, leaf = name.rpartition(".")
    return (root.get_submodule(parent) if parent else root), leaf


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    """Put `module` at `name` inside `root`, in place of what is there."""
    parent, leaf = _parent(root, name)
    setattr(parent, leaf, module)


def remove_submodule(root: nn.Module, name: str) -> None:
    """Take the submodule at `name` out of `root`."""
    parent, leaf = _parent(root, name)
    delattr(parent, leaf)
