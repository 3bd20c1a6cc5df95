"""Exact parameter counts (the README's reference numbers, computed from the authors' code), FLOPs and size."""
from __future__ import annotations

import json

import pytest
import torch.nn as nn

from study import accounting
from study.csg import generated_convs, n_slices
from study.methods import build

PLAIN = {"resnet20": 269_722, "resnet32": 464_154, "resnet44": 658_586, "resnet56": 853_018,
         "resnet110": 1_727_962}
CSG = [("resnet20", 16, 72, 176_698), ("resnet20", 16, 128, 312_218), ("resnet56", 16, 128, 347_162),
       ("resnet56", 12, 72, 160_450)]


def _params_cli(cli, *args):
    proc = cli("params", *args, "--json", "--no-flops")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# -- through the command line (a few: each call is a fresh interpreter) -----------------------------
def test_cli_plain_resnet56(cli):
    out = _params_cli(cli, "--arch", "resnet56")
    assert out["total"] == out["trainable"] == out["stored"] == 853_018
    assert out["frozen"] == 0 and out["nonzero"] <= out["total"]


def test_cli_csg_resnet20_16_72(cli):
    out = _params_cli(cli, "--arch", "resnet20", "--method", "csg", "--slice", "16", "--code-dim", "72")
    assert out["total"] == out["trainable"] == out["stored"] == 176_698
    assert out["args"]["slice"] == 16 and out["args"]["code_dim"] == 72


def test_cli_binary_generator_resnet56_16_128(cli):
    out = _params_cli(cli, "--arch", "resnet56", "--method", "csg", "--slice", "16", "--code-dim", "128",
                      "--generator", "binary")
    assert out["total"] == 347_162
    assert out["trainable"] == out["stored"] == 52_250
    assert out["frozen"] == 294_912 == 16 * 16 * 9 * 128
    assert out["trainable"] + out["frozen"] == out["total"]


# -- through the Python API --------------------------------------------------------------------------
@pytest.mark.parametrize("arch,expected", sorted(PLAIN.items()))
def test_plain_counts(arch, expected):
    model, _ = build(arch)
    c = accounting.count_parameters(model)
    assert c["total"] == c["trainable"] == c["stored"] == expected
    assert c["frozen"] == 0


@pytest.mark.parametrize("layout", ["contiguous", "block"])
@pytest.mark.parametrize("arch,s,d,expected", CSG)
def test_csg_counts(arch, s, d, expected, layout):
    model, _ = build(arch, "csg", {"slice": s, "code_dim": d, "layout": layout})
    c = accounting.count_parameters(model)
    assert c["total"] == c["trainable"] == c["stored"] == expected
    # and by hand: plain count, minus the generated kernels, plus the codes and one generator
    layers = [m for _, m in generated_convs(model)]
    removed = sum(m.in_channels * m.out_channels * 9 for m in layers)
    codes = sum(n_slices(m.in_channels, m.out_channels, s) for m in layers) * d
    assert expected == PLAIN[arch] - removed + codes + s * s * 9 * d


def test_a_shared_tensor_counts_once():
    lin = nn.Linear(10, 10)
    net = nn.Sequential(lin, nn.ReLU(), lin)
    c = accounting.count_parameters(net)
    assert c["total"] == 110 and c["trainable"] == 110


def test_nonzero_counts_zeros():
    lin = nn.Linear(10, 10)
    nn.init.zeros_(lin.bias)
    lin.weight.data[:3] = 0
    c = accounting.count_parameters(lin)
    assert c["total"] == 110 and c["nonzero"] == 70


def test_forward_flops_equal_plain_and_generation_counted_apart():
    plain, _ = build("resnet20")
    csg, _ = build("resnet20", "csg", {"slice": 16, "code_dim": 72})
    fp = accounting.flops(plain, (3, 32, 32))
    fc = accounting.flops(csg, (3, 32, 32))
    assert fp["flops"] == fc["flops"] > 0
    assert fp["macs"] == fc["macs"] == fp["flops"] // 2
    assert fp["kernel_gen_flops"] == 0
    total_slices = sum(n_slices(m.in_channels, m.out_channels, 16) for _, m in generated_convs(csg))
    assert total_slices == 116  # 6 + (2 + 5*4) + (8 + 5*16) for ResNet-20 with 16-wide slices
    assert fc["kernel_gen_flops"] == 2 * total_slices * 72 * 16 * 16 * 9
    # by hand for one conv: a 3x3 conv 16->16 on 32x32 is 2 * 16*16*9 * 32*32 FLOPs
    assert fp["flops"] > 2 * 16 * 16 * 9 * 32 * 32 * 19 // 4


def test_flops_of_a_single_conv_by_hand():
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    assert accounting.flops(nn.Sequential(conv), (4, 8, 8))["flops"] == 2 * 4 * 6 * 9 * 8 * 8


def test_binary_csg_is_smaller_on_disk_than_learned():
    learned, _ = build("resnet20", "csg", {"slice": 16, "code_dim": 72})
    binary, _ = build("resnet20", "csg", {"slice": 16, "code_dim": 72, "generator": "binary"})
    plain, _ = build("resnet20")
    b_learned, b_binary, b_plain = (accounting.bytes_on_disk(m) for m in (learned, binary, plain))
    assert b_binary < b_learned < b_plain
    # the difference is the generator's fp32 weight (16*16*9*72 values), give or take pickle framing
    assert abs((b_learned - b_binary) - 16 * 16 * 9 * 72 * 4) < 4096
    assert "csg.weight" not in accounting.compact_state_dict(binary)


def test_account_holds_every_count():
    model, _ = build("resnet20", "csg", {"slice": 16, "code_dim": 72, "generator": "binary"})
    out = accounting.account(model, (3, 32, 32))
    for key in (*accounting.COUNTS, "bytes_on_disk", "flops", "macs", "kernel_gen_flops"):
        assert key in out
    assert out["frozen"] == 16 * 16 * 9 * 72
    assert out["stored"] == out["trainable"] == out["total"] - out["frozen"]
