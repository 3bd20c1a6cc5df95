"""The Convolutional Slice Generator (CSG) and the convolutions it writes.

One bias-free linear map, shared by a whole network, turns a `code_dim`-vector into one slice of
`slice * slice * k * k` kernel values.  A converted layer stores only its codes (one per slice);
its kernel is assembled from the generated slices on the fly.

Speed: the generator builds the kernels of *all* its layers in one matrix product, once per forward
pass of the network.  The scope of that one generation is explicit: a forward pre-hook on the root
module (the one the generator is registered on) opens it and a forward hook closes it, so nothing
is kept between passes (a pass after an optimiser step, a `load_state_dict` or a `.half()` always
sees the new values).  A layer called on its own, outside a pass of its root, generates afresh.
Generating every ResNet-20 kernel costs about 68 MFLOP a pass, against about 20 GFLOP of convolution
for a 256-image batch; `materialize()` serves repeated inference with no generation at all.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, asdict
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from study.surgery import remove_submodule, set_submodule

LAYOUTS = ("contiguous", "block")
GENERATORS = ("learned", "binary", "reuse")
INITS = ("kaiming", "linear")


@dataclass(frozen=True)
class CSGSpec:
    """Everything that defines a CSG conversion; no module-level constants anywhere."""

    slice: int = 16
    code_dim: int = 72
    kernel_size: int = 3
    layout: str = "contiguous"
    generator: str = "learned"
    # 'kaiming' with codes N(0.001, 1) is the authors' CIFAR-ResNet recipe; 'linear' with codes
    # N(0, 1) is what their other models use (PyTorch's default Linear init).
    init: str = "kaiming"
    code_mean: float = 0.001
    seed: int = 0  # seeds the frozen random-binary generator so it never needs storing

    def __post_init__(self):
        for name in ("slice", "code_dim", "kernel_size"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.generator not in GENERATORS:
            raise ValueError(f"generator must be one of {GENERATORS}, got {self.generator!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")

    def as_dict(self) -> dict:
        return asdict(self)


def n_slices(in_channels: int, out_channels: int, slice_size: int) -> int:
    return math.ceil(in_channels / slice_size) * math.ceil(out_channels / slice_size)


def assemble(slices: torch.Tensor, out_channels: int, in_channels: int, slice_size: int,
             kernel_size: int, layout: str) -> torch.Tensor:
    """Turn `[n_slices, S*S*k*k]` generated values into a cropped `[C_out, C_in, k, k]` kernel.

    contiguous: the authors' reading; the rows are one flat row-major buffer viewed as the padded
        kernel, so one slice is S*S*k*k consecutive values of it.
    block: the paper's reading; slice (i, j) is the S x S tile of output block i, input block j.
    """
    S, k = slice_size, kernel_size
    n_out, n_in = math.ceil(out_channels / S), math.ceil(in_channels / S)
    if layout == "contiguous":
        kernel = slices.reshape(n_out * S, n_in * S, k, k)
    elif layout == "block":
        kernel = slices.reshape(n_out, n_in, S, S, k, k).permute(0, 2, 1, 3, 4, 5)
        kernel = kernel.reshape(n_out * S, n_in * S, k, k)
    else:
        raise ValueError(f"unknown layout {layout!r}")
    return kernel[:out_channels, :in_channels]


class SliceGenerator(nn.Module):
    """The shared generator: `weight` is `[S*S*k*k, code_dim]`, as in the authors' `nn.Linear`.

    A random-binary generator's ±0.5 weight is a frozen parameter marked `regenerable`: it is rebuilt
    from `spec.seed` and never trained, and accounting leaves it out of `stored`.
    A reused generator (`generator="reuse"`) is frozen too, but it is another run's trained weight,
    so a checkpoint must carry it: it starts as a learned generator's initialisation (a placeholder,
    drawn from the same random stream) until `load_reused` copies the source's weight in.
    """

    def __init__(self, spec: CSGSpec):
        super().__init__()
        self.spec = spec
        out_features = spec.slice * spec.slice * spec.kernel_size * spec.kernel_size
        weight = torch.empty(out_features, spec.code_dim)
        if spec.generator == "binary":
            # the sign of a seeded Kaiming-normal draw, scaled to +-0.5 (the authors' recipe)
            g = torch.Generator().manual_seed(spec.seed)
            draw = torch.randn(out_features, spec.code_dim, generator=g)
            self.weight = nn.Parameter(torch.where(draw >= 0, 0.5, -0.5), requires_grad=False)
            self.weight.regenerable = True  # accounting: frozen, and not part of `stored`
        else:
            if spec.init == "kaiming":
                nn.init.kaiming_normal_(weight)  # fan-in = code_dim
            else:
                nn.init.kaiming_uniform_(weight, a=math.sqrt(5))  # nn.Linear's default
            self.weight = nn.Parameter(weight, requires_grad=spec.generator == "learned")
        self._layers: list[GeneratedConv2d] = []
        self._in_pass = False  # inside a forward pass of the root (see `GenerationScope`)
        self._kernels: list[torch.Tensor] | None = None  # this pass's kernels, once generated

    @torch.no_grad()
    def load_reused(self, weight: torch.Tensor) -> None:
        """Copy another run's trained generator weight into this frozen (`reuse`) generator."""
        if self.spec.generator != "reuse":
            raise ValueError(f"only a generator: reuse takes another run's weight (this one is {self.spec.generator!r})")
        if tuple(weight.shape) != tuple(self.weight.shape):
            raise ValueError(f"the reused generator is {tuple(weight.shape)}; this network's needs "
                             f"{tuple(self.weight.shape)} (slice^2*k^2 x code_dim)")
        self.weight.copy_(weight.to(self.weight.dtype))

    # -- registration -------------------------------------------------------------------------
    def attach(self, layer: "GeneratedConv2d") -> None:
        layer.generator_index = len(self._layers)
        self._layers.append(layer)
        self._kernels = None

    @property
    def layers(self) -> list["GeneratedConv2d"]:
        return list(self._layers)

    # -- generation ---------------------------------------------------------------------------
    def product(self, codes: torch.Tensor) -> torch.Tensor:
        """`[n, code_dim]` codes -> `[n, S*S*k*k]` generated slice values: the one bias-free map.  The
        hook a generator with another generation overrides (`baselines/hypernet.py`)."""
        return F.linear(codes, self.weight)

    def _timed_product(self, codes: torch.Tensor) -> torch.Tensor:
        with torch.profiler.record_function("csg_product"):  # a named scope for `study bench`'s breakdown
            return self.product(codes)

    def generate_all(self, memory_format: torch.memory_format = torch.contiguous_format) -> list[torch.Tensor]:
        """Every attached layer's kernel from a single `product`, dense in `memory_format`."""
        layers = self._layers
        codes = torch.cat([layer.code for layer in layers]) if len(layers) > 1 else layers[0].code
        flat = self._timed_product(codes)
        # One split node, not a slice per layer: the backward of `flat[start:stop]` writes each
        # layer's gradient into a zero tensor of the whole product's size and sums them all.
        parts = flat.split([layer.code.shape[0] for layer in layers]) if len(layers) > 1 else (flat,)
        return [layer.assemble(part, memory_format) for layer, part in zip(layers, parts)]

    def kernel_for(self, layer: "GeneratedConv2d",
                   memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
        """`layer`'s kernel, dense in `memory_format` (a conv with channels_last input takes a
        channels_last kernel without converting it).  Inside a forward pass of the root, all kernels
        are generated once, in the format of the layer that asks first (another format gets a
        converted copy); outside one, only this layer's kernel is generated, from its own codes."""
        if not self._in_pass:
            return layer.assemble(self._timed_product(layer.code), memory_format)
        if self._kernels is None:
            self._kernels = self.generate_all(memory_format)
        return self._kernels[layer.generator_index].contiguous(memory_format=memory_format)

    def extra_repr(self) -> str:
        s = self.spec
        return (f"slice={s.slice}x{s.slice}x{s.kernel_size}x{s.kernel_size}, code_dim={s.code_dim}, "
                f"layout={s.layout}, generator={s.generator}, layers={len(self._layers)}")

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.spec.generator == "binary":
            destination.pop(prefix + "weight", None)  # rebuilt from the seed, so never saved

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if self.spec.generator == "binary":  # keep the seeded weight; checkpoints need not carry it
            state_dict[prefix + "weight"] = self.weight.detach()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def __getstate__(self):  # a pass's kernels hold graph tensors; never pickle or deepcopy them
        return {**self.__dict__, "_in_pass": False, "_kernels": None}


class GenerationScope:
    """The forward pre-hook (`start`) and always-called forward hook (end) on the root module that
    owns a generator: one forward pass of the root is one generation.  A module-level class that
    finds the generator by name, not a closure, so that deepcopy and pickle give a copy's hooks the
    copy's generator."""

    def __init__(self, generator_name: str, start: bool):
        self.generator_name, self.start = generator_name, start

    def __call__(self, module, args, *output):
        gen = module._modules.get(self.generator_name)
        if isinstance(gen, SliceGenerator) and not torch.compiler.is_compiling():
            gen._in_pass, gen._kernels = self.start, None
        return None


def attach_generator(model: nn.Module, name: str, generator: SliceGenerator) -> nn.Module:
    """Register `generator` on the root `model` as `name`, with its per-pass generation scope."""
    model.add_module(name, generator)
    model.register_forward_pre_hook(GenerationScope(name, start=True))
    model.register_forward_hook(GenerationScope(name, start=False), always_call=True)
    return model


class GeneratedConv2d(nn.Module):
    """A convolution whose kernel is written by a shared `SliceGenerator` from this layer's codes."""

    def __init__(self, in_channels: int, out_channels: int, generator: SliceGenerator, *,
                 stride=1, padding=0, dilation=1, bias: bool = False, code_mean: float | None = None):
        super().__init__()
        spec = generator.spec
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = (spec.kernel_size, spec.kernel_size)
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.code = nn.Parameter(torch.empty(n_slices(in_channels, out_channels, spec.slice), spec.code_dim))
        nn.init.normal_(self.code, mean=spec.code_mean if code_mean is None else code_mean, std=1.0)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        # Held outside the module tree: the generator is registered once, at the network's root,
        # so it is counted and saved once however many layers share it.
        object.__setattr__(self, "generator", generator)
        generator.attach(self)

    def assemble(self, slices: torch.Tensor,
                 memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
        spec = self.generator.spec
        kernel = assemble(slices, self.out_channels, self.in_channels, spec.slice, spec.kernel_size, spec.layout)
        # The crop leaves a strided view; hand the convolution a dense kernel in its own layout.
        return kernel.contiguous(memory_format=memory_format)

    def kernel(self, memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
        return self.generator.kernel_for(self, memory_format)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a channels_last input gets a channels_last kernel: oneDNN then needs no reorder of its own
        fmt = (torch.channels_last if x.dim() == 4 and not x.is_contiguous()
               and x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)
        if torch.compiler.is_compiling():
            # torch.compile traces the product itself (the per-pass scope's Python bookkeeping would
            # only cause graph breaks and recompilations); the compiled graph computes it once per call
            kernel = self.assemble(self.generator.product(self.code), fmt)
        else:
            kernel = self.kernel(fmt)
        return F.conv2d(x, kernel, self.bias, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, slices={self.code.shape[0]}")


# -- conversion -------------------------------------------------------------------------------
Policy = Callable[[str, nn.Conv2d], bool]


def all_eligible(first_conv: str) -> Policy:
    """Every non-depthwise, ungrouped conv except the network's first one (named `first_conv`)."""
    return lambda name, conv: name != first_conv and conv.groups == 1


def convert(model: nn.Module, spec: CSGSpec, policy: Policy, generator_name: str = "csg") -> nn.Module:
    """Replace the convs that `policy` selects (and whose kernel size matches the generator's) by
    generated convs sharing one generator, registered on `model` as `generator_name`.

    Works in place and returns `model`.  Convs are visited in module order, which fixes the order
    of their codes inside the generator's batched product.
    """
    if isinstance(model, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
        # the generator is registered on the root: a container root would run it as a layer
        raise ValueError(f"convert() needs a model whose root is not an nn.{type(model).__name__} "
                         "(the shared generator is registered on the root); wrap it in an nn.Module")
    generator = SliceGenerator(spec)
    chosen = [(name, m) for name, m in model.named_modules()
              if isinstance(m, nn.Conv2d) and m.kernel_size == (spec.kernel_size,) * 2 and policy(name, m)]
    if not chosen:
        raise ValueError("the conversion policy selected no convolution of kernel size "
                         f"{spec.kernel_size}; nothing to generate")
    for name, conv in chosen:
        if conv.groups != 1:
            raise ValueError(f"{name}: grouped/depthwise convs cannot be generated")
        new = GeneratedConv2d(conv.in_channels, conv.out_channels, generator, stride=conv.stride,
                              padding=conv.padding, dilation=conv.dilation, bias=conv.bias is not None)
        set_submodule(model, name, new)
    return attach_generator(model, generator_name, generator)


def generators(model: nn.Module) -> list[SliceGenerator]:
    return [m for m in model.modules() if isinstance(m, SliceGenerator)]


def generated_convs(model: nn.Module) -> Iterable[tuple[str, GeneratedConv2d]]:
    return ((n, m) for n, m in model.named_modules() if isinstance(m, GeneratedConv2d))


@torch.no_grad()
def materialize(model: nn.Module) -> nn.Module:
    """An ordinary-conv copy of a CSG network with identical outputs: for inference and export."""
    import copy

    plain = copy.deepcopy(model)
    kernels = {id(g): g.generate_all() for g in generators(plain)}  # one product per generator
    for name, layer in list(generated_convs(plain)):
        conv = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                         padding=layer.padding, dilation=layer.dilation, bias=layer.bias is not None)
        conv = conv.to(device=layer.code.device, dtype=layer.code.dtype)
        conv.weight.copy_(kernels[id(layer.generator)][layer.generator_index])
        if layer.bias is not None:
            conv.bias.copy_(layer.bias)
        set_submodule(plain, name, conv)
    for name, m in list(plain.named_modules()):
        if isinstance(m, SliceGenerator):
            remove_submodule(plain, name)
    return plain
