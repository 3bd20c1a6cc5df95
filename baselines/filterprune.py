"""L1-norm filter pruning (`--method filterprune`; Li, Kadav, Durdanovic, Samet & Graf, ICLR 2017).

At the start of epoch round(prune_at * epochs) (at the latest the last epoch), whole output filters
of each prunable conv are removed, smallest L1 norm first, and the network is rebuilt genuinely
smaller; it is then fine-tuned for the rest of training.

Which convs are prunable is found on the traced graph (`torch.fx`), so it works on any zoo
architecture without knowing its block classes: a conv of `layers` (default `authors`: on CIFAR
ResNets the 3x3 block convs) whose output runs, used by nothing else, through BatchNorms,
depthwise convs and channel-wise activations only, into exactly one ungrouped conv.  Removing its
filter i then removes channel i of each BatchNorm and depthwise conv on the way and input channel i
of the consuming conv, and every other tensor keeps its shape.  A conv whose output joins a
residual sum or a concatenation is never pruned.  On a CIFAR ResNet basic block this is conv_a -> bn_a -> relu ->
conv_b: conv_a's filters, bn_a's channels and conv_b's input channels go; conv_b's output, which
feeds the residual sum, is untouched (Li et al.'s choice for ResNets).  On a bottleneck block both
conv1 and conv2 qualify under `eligible`; on MobileNetV2 the 1x1 expansion conv qualifies (through
the depthwise conv into the projection); on DenseNet-BC only the 1x1 bottleneck conv does, under
`eligible` (the 3x3 conv the authors generate feeds a concatenation).

`ratio` is the fraction of filters removed per prunable conv.  Applied layer by layer and rounded,
a ratio moves every same-width layer one filter at once, so the per-layer counts are apportioned
from the rounded total instead (largest remainder): each layer loses round-ish(ratio * C_l)
filters, within one of its exact share, always keeping at least one.

Protocols (`protocol`):
  (left out)  prune at the start of epoch round(prune_at * epochs), into the running schedule, and
              fine-tune for the rest (the behaviour before this argument existed; such configs keep
              their hash).
  li          Li et al.'s own protocol: train the network dense, prune the *trained* network once
              (every layer at the same time, smallest L1 norms first), then retrain it.  Their
              CIFAR ResNets trained 164 epochs and retrained 40, so unless the grid names `prune_at`
              it is 0.8 here (the last 20% of the run retrains).  At least one epoch is dense and at
              least one retrains.  The learning rate of the retraining is the run's schedule at that
              point (Li et al. retrain at a constant 0.001 after the schedule ends): a method cannot
              set the trainer's learning rate.
`variant(args)` names the protocol for tables.

The budget count is `total` of the model training ends with (the pruned one); `counted` gives it
for an unpruned model too.  `structure` records, per pruned conv, the kept filter indices, and
`restore` rebuilds a fresh model to those shapes so a checkpoint of the pruned model loads.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from study.accounting import unique_parameters
from study.methods import Method, register
from study.surgery import set_submodule

from baselines import _common as C

PROTOCOLS = (None, "li")

_CHANNELWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.GELU, nn.Hardswish,
                        nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout2d)
_CHANNELWISE_FUNCTIONS = {F.relu, F.relu6, F.leaky_relu, F.elu, F.silu, F.gelu, F.hardswish, F.hardsigmoid,
                          torch.relu, torch.sigmoid, torch.tanh, F.dropout, torch.relu_, F.relu_}
_CHANNELWISE_METHODS = {"relu", "relu_", "sigmoid", "tanh", "clamp", "clamp_"}


@dataclass(frozen=True)
class Chain:
    conv: str                  # the conv whose output filters go
    through: tuple[str, ...]   # BatchNorms and depthwise convs in between (their channels go)
    consumer: str              # the conv whose input channels go


def _depthwise(m: nn.Module, channels: int) -> bool:
    return type(m) is nn.Conv2d and m.groups == m.in_channels == m.out_channels == channels


def chains(model: nn.Module, arch, layers: str) -> list[Chain]:
    """Every prunable conv -> [BN / depthwise conv / channel-wise op]* -> conv chain, in graph order."""
    chosen = C.policy(arch, layers)
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as e:  # noqa: BLE001  (tracing failures come in many types)
        raise ValueError(f"filterprune: cannot trace {arch.name} with torch.fx ({type(e).__name__}: {e})") from None
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1

    def called_once(node):
        return calls[node.target] == 1

    found = []
    for node in graph.nodes:
        if node.op != "call_module" or not called_once(node):
            continue
        conv = modules[node.target]
        if type(conv) is not nn.Conv2d or not chosen(node.target, conv):
            continue
        cur, through, consumer = node, [], None
        while len(cur.users) == 1:
            nxt = next(iter(cur.users))
            if not nxt.args or nxt.args[0] is not cur or any(a is cur for a in list(nxt.args[1:]) +
                                                              list(nxt.kwargs.values())):
                break
            if nxt.op == "call_module":
                m = modules[nxt.target]
                if isinstance(m, _CHANNELWISE_MODULES):  # stateless: may be shared (torchvision's relu)
                    pass
                elif not called_once(nxt):
                    break
                elif type(m) is nn.BatchNorm2d and m.num_features == conv.out_channels:
                    through.append(nxt.target)
                elif _depthwise(m, conv.out_channels):
                    through.append(nxt.target)
                elif type(m) is nn.Conv2d and m.groups == 1 and m.in_channels == conv.out_channels:
                    consumer = nxt.target
                    break
                else:
                    break
            elif nxt.op == "call_function" and nxt.target in _CHANNELWISE_FUNCTIONS:
                pass
            elif nxt.op == "call_method" and nxt.target in _CHANNELWISE_METHODS:
                pass
            else:
                break
            cur = nxt
        if consumer is not None:
            found.append(Chain(node.target, tuple(through), consumer))
    return found


def removals(model: nn.Module, found: list[Chain], ratio: float) -> list[int]:
    """Filters removed per chain: `ratio` of each conv's filters, apportioned (see module doc)."""
    widths = [model.get_submodule(c.conv).out_channels for c in found]
    return C.apportion([ratio * w for w in widths], minimum=0, maximum=[w - 1 for w in widths])


def per_filter_params(model: nn.Module, chain: Chain) -> int:
    conv, consumer = model.get_submodule(chain.conv), model.get_submodule(chain.consumer)
    n = conv.weight[0].numel() + (1 if conv.bias is not None else 0)
    n += consumer.weight[:, 0].numel()
    for name in chain.through:
        m = model.get_submodule(name)
        if isinstance(m, nn.BatchNorm2d):
            n += 2 if m.affine else 0
        else:
            n += m.weight[0].numel() + (1 if m.bias is not None else 0)
    return n


# -- surgery ----------------------------------------------------------------------------------------
@torch.no_grad()
def shrink_conv(conv: nn.Conv2d, out_keep: torch.Tensor | None = None, in_keep: torch.Tensor | None = None):
    """A copy of `conv` with only the output filters `out_keep` and input channels `in_keep`
    (a depthwise conv keeps channels `out_keep` on both sides)."""
    weight, bias = conv.weight, conv.bias
    depthwise = conv.groups > 1
    if depthwise and (in_keep is not None or conv.groups != conv.in_channels or conv.groups != conv.out_channels):
        raise ValueError("shrink_conv: only depthwise convs with one filter per channel can lose channels")
    if out_keep is not None:
        weight = weight[out_keep]
        bias = bias[out_keep] if bias is not None else None
    if in_keep is not None:
        weight = weight[:, in_keep]
    channels = weight.shape[0]
    new = nn.Conv2d(channels if depthwise else weight.shape[1], channels, conv.kernel_size, stride=conv.stride,
                    padding=conv.padding, dilation=conv.dilation, groups=channels if depthwise else 1,
                    bias=bias is not None, padding_mode=conv.padding_mode)
    new = C.like(new, conv.weight)
    new.weight.copy_(weight)
    if bias is not None:
        new.bias.copy_(bias)
    new.train(conv.training)
    return new


@torch.no_grad()
def shrink_bn(bn: nn.BatchNorm2d, keep: torch.Tensor) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(len(keep), eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                         track_running_stats=bn.track_running_stats)
    new = new.to(device=(bn.weight if bn.affine else bn.running_mean).device)
    if bn.affine:
        new.weight.copy_(bn.weight[keep])
        new.bias.copy_(bn.bias[keep])
    if bn.track_running_stats:
        new.running_mean.copy_(bn.running_mean[keep])
        new.running_var.copy_(bn.running_var[keep])
        new.num_batches_tracked.copy_(bn.num_batches_tracked)
    new.train(bn.training)
    return new


def apply_keep(model: nn.Module, chain: Chain, keep: list[int]) -> None:
    """Remove every filter of `chain.conv` not in `keep`, in place."""
    conv = model.get_submodule(chain.conv)
    idx = torch.as_tensor(sorted(keep), dtype=torch.long, device=conv.weight.device)
    set_submodule(model, chain.conv, shrink_conv(conv, out_keep=idx))
    for name in chain.through:
        m = model.get_submodule(name)
        set_submodule(model, name, shrink_bn(m, idx) if isinstance(m, nn.BatchNorm2d) else shrink_conv(m, idx))
    set_submodule(model, chain.consumer, shrink_conv(model.get_submodule(chain.consumer), in_keep=idx))


@torch.no_grad()
def l1_keep(conv: nn.Conv2d, remove: int) -> list[int]:
    """Indices of the filters with the largest L1 norms (ties: the earlier filter stays)."""
    norms = conv.weight.detach().abs().flatten(1).sum(1).double().cpu()
    order = sorted(range(len(norms)), key=lambda i: (-float(norms[i]), i))
    return sorted(order[:len(norms) - remove])


@register
class FilterPrune(Method):
    name = "filterprune"
    knob = "ratio"
    count = "total"
    defaults = {"ratio": 0.3, "prune_at": 0.5, "layers": "authors", "protocol": None}
    unnamed = {"protocol": None}  # left out of the resolved args at this value (see C.omit_at)
    LI_PRUNE_AT = 0.8             # Li et al., CIFAR ResNets: 164 epochs of training, 40 of retraining

    def args(self, given):
        args = super().args(given)
        C.check_choice(self.name, "protocol", args["protocol"], PROTOCOLS)
        if args["protocol"] == "li" and "prune_at" not in given:
            args["prune_at"] = self.LI_PRUNE_AT
        args["ratio"] = C.check_fraction(self.name, "ratio", args["ratio"], hi_open=True)
        args["prune_at"] = C.check_fraction(self.name, "prune_at", args["prune_at"])
        C.check_choice(self.name, "layers", args["layers"], C.LAYER_SETS)
        return C.omit_at(args, self.unnamed)

    def variant(self, args: dict) -> str:
        if args.get("protocol") == "li":
            return f"Li et al.: train dense, prune the trained network at {args['prune_at']:g}, retrain"
        return f"pruned at {args['prune_at']:g} of training, fine-tuned"

    def prune_epoch(self, args: dict, epochs: int) -> int:
        """The 0-based epoch at whose start the filters go."""
        last = max(0, epochs - 1)
        at = C.epoch_at(args["prune_at"], epochs)
        if args.get("protocol") == "li":
            at = max(1, at)  # a trained network: at least one dense epoch (when there are two)
        return min(at, last)

    def plan(self, model, arch, args) -> list[tuple[Chain, int]]:
        found = chains(model, arch, args["layers"])
        if not found:
            hint = " (try layers: eligible)" if args["layers"] == "authors" else ""
            raise ValueError(f"filterprune: none of {arch.name}'s {args['layers']} convs feeds, through only "
                             f"BatchNorm, depthwise convs and channel-wise ops, a single conv, so no filter can be "
                             f"removed without reshaping other layers{hint}")
        return list(zip(found, removals(model, found, float(args["ratio"]))))

    @staticmethod
    def is_pruned(model) -> bool:
        return getattr(model, "filterprune_kept", None) is not None

    def prune(self, model: nn.Module, arch, args) -> nn.Module:
        """Remove the smallest-L1 filters in place; records the kept indices on the model."""
        plan = self.plan(model, arch, args)
        # every norm is read before any surgery (a conv can both consume one chain and head another)
        kept = {chain.conv: l1_keep(model.get_submodule(chain.conv), remove) for chain, remove in plan}
        for chain, _ in plan:
            apply_keep(model, chain, kept[chain.conv])
        model.filterprune_kept = kept
        return model

    # -- the Method interface ------------------------------------------------------------------
    def build(self, arch, args, seed=0):
        model = C.tag(arch.build(num_classes=arch.num_classes), arch)
        self.plan(model, arch, args)  # fail early when nothing is prunable
        return model

    def on_epoch_start(self, model, args, epoch, epochs):
        if self.is_pruned(model) or epoch < self.prune_epoch(args, epochs):
            return model
        # a new model object: the trainer sees the change and rebuilds its optimiser
        return self.prune(copy.deepcopy(model), C.arch_of(model, self.name), args)

    def structure(self, model):
        kept = getattr(model, "filterprune_kept", None)
        return {} if kept is None else {"kept": {k: list(map(int, v)) for k, v in kept.items()}}

    def restore(self, model, args, structure):
        kept = structure.get("kept")
        if not kept or self.is_pruned(model):
            return model
        arch = C.arch_of(model, self.name)
        found = {c.conv: c for c in chains(model, arch, args["layers"])}
        missing = set(kept) - set(found)
        if missing:
            raise ValueError(f"filterprune: checkpoint prunes {sorted(missing)}, which this model cannot prune")
        for name, keep in kept.items():
            apply_keep(model, found[name], keep)
        model.filterprune_kept = {k: list(v) for k, v in kept.items()}
        return model

    def counted(self, model, arch, args):
        """`total` of the pruned model: the model's own count once pruned, else what pruning will leave."""
        total = unique_parameters(model)
        if self.is_pruned(model):
            return total
        return total - sum(r * per_filter_params(model, c) for c, r in self.plan(model, arch, args))

    def search(self, arch, args, target):
        model = C.skeleton(arch)
        found = chains(model, arch, args["layers"])
        if not found:
            self.plan(model, arch, args)
        total = unique_parameters(model)
        sizes = [per_filter_params(model, c) for c in found]

        def count(ratio):
            return total - sum(r * s for r, s in zip(removals(model, found, ratio), sizes))

        ratio = C.search_monotone(self.name, "ratio", count, target, 0.0, 1.0 - 1e-9, self.tolerance)
        return {**args, "ratio": C.shorten(count, ratio, 0.0, 1.0 - 1e-9)}
