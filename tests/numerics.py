"""Tolerances that follow from the arithmetic, for tests that compute one value two ways.

Two float32 results that sum the same products in another order (a batched GEMM against one GEMM
per layer, another CPU's BLAS blocking, FMA or not, another thread count) differ in their last bits,
and by how much depends on the machine.  What holds on every machine is the error bound of an
n-term dot product (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., §3.1), for
any order of summation:

    |fl(sum_i a_i b_i) - sum_i a_i b_i| <= gamma_n * sum_i |a_i| |b_i|,    gamma_n = n u / (1 - n u),

u being the unit roundoff (half the dtype's eps).  `assert_within_dot_bound` checks a float32
result against the exact value (float64, from the same float32 inputs) with that bound, element by
element.  Where a value goes through a whole network (no simple bound), the comparison runs in
float64 instead (`assert_close_fp64`).  Where the two sides are by design the same operation on the
same operands, tests compare bitwise instead (`torch.equal`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def gamma(n: int, dtype: torch.dtype = torch.float32) -> float:
    """gamma_n = n u / (1 - n u) for `dtype`."""
    u = torch.finfo(dtype).eps / 2
    assert n * u < 1, (n, dtype)
    return n * u / (1 - n * u)


def linear_exact(a: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`F.linear(a, w)` in float64, and its per-element magnitude sum_k |a_k| |w_k| (the bound's scale)."""
    a64, w64 = a.detach().double(), w.detach().double()
    return F.linear(a64, w64), F.linear(a64.abs(), w64.abs())


def assert_within_dot_bound(actual: torch.Tensor, exact: torch.Tensor, magnitude: torch.Tensor, n: int,
                            what: str = "") -> None:
    """Each element of `actual` (any float dtype) is within gamma_n * magnitude of `exact` (float64).

    `exact` carries its own float64 rounding, at most gamma_n(float64) * magnitude; it is added.
    """
    assert actual.shape == exact.shape == magnitude.shape, (what, actual.shape, exact.shape, magnitude.shape)
    bound = (gamma(n, actual.dtype) + gamma(n, torch.float64)) * magnitude
    err = (actual.detach().double() - exact).abs()
    over = err > bound
    assert not over.any(), (f"{what}: {int(over.sum())} of {err.numel()} elements beyond the rounding bound of an "
                            f"{n}-term dot product (worst error {float(err.max()):.3g}, "
                            f"worst excess {float((err - bound).max()):.3g})")


# Float64 rounding (u = 1.1e-16) over reductions of at most a few thousand terms, amplified through a
# network's depth, stays many orders below 1e-9 of the values' scale; any wiring error (a wrong slice, a
# dropped layer or channel, a stale kernel) is of the order of the values themselves.
FP64_RTOL = 1e-9


def assert_close_fp64(actual: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    """Two float64 results of the same function computed in different orders agree to 1e-9 of their scale."""
    assert actual.dtype == expected.dtype == torch.float64, (what, actual.dtype, expected.dtype)
    scale = float(expected.detach().abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=FP64_RTOL, atol=FP64_RTOL * scale, msg=lambda m: f"{what}: {m}")


def split_product(gen):
    """The generator's one matrix product over every attached layer's codes, split per layer: what
    `generate_all` must equal bitwise (it is the same product)."""
    import torch
    import torch.nn.functional as F

    layers = gen.layers
    return F.linear(torch.cat([layer.code for layer in layers]), gen.weight).split(
        [layer.code.shape[0] for layer in layers])
