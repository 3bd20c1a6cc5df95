"""The committed grid files load as the runner would load them, and `configs/quick.yaml` holds the
reference study: plain, learned CSG 16 x {8, 16, 32, 72, 128}, the block layout, the random-binary
generator, every baseline at CSG 16/72's parameter budget, two seeds or more for plain and CSG 16/72."""
from __future__ import annotations

from collections import Counter

import pytest

from conftest import REPO
from study import grid
from study.methods import method_names

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_committed_grid_loads(path):
    g = grid.load(path)
    assert g.runs and g.name == path.stem
    for cfg in g.runs:  # every budget search resolved to a count
        assert cfg.hash() in g.resolved_args and g.counts[cfg.hash()]["total"] > 0


def test_quick_is_the_reference_study():
    g = grid.load(CONFIGS[0].parent / "quick.yaml")
    assert {c.arch for c in g.runs} == {"resnet20"}
    csg = [c for c in g.runs if c.method == "csg"]

    def csg_like(c, **want):
        args = {"layout": "contiguous", "generator": "learned", **c.method_args}
        return all(args.get(k) == v for k, v in want.items())

    seeds = Counter()
    for c in g.runs:
        if c.method == "none":
            seeds["plain"] += 1
        elif c.method == "csg" and csg_like(c, slice=16, code_dim=72, layout="contiguous", generator="learned"):
            seeds["csg16x72"] += 1
    assert seeds["plain"] >= 2 and seeds["csg16x72"] >= 2
    learned = {c.method_args["code_dim"] for c in csg if csg_like(c, slice=16, layout="contiguous", generator="learned")}
    assert learned == {8, 16, 32, 72, 128}
    assert any(csg_like(c, slice=16, code_dim=72, layout="block") for c in csg)
    assert any(csg_like(c, slice=16, code_dim=72, generator="binary") for c in csg)
    budget = next(g.counts[c.hash()]["stored"] for c in csg if csg_like(c, slice=16, code_dim=72))
    baselines = [m for m in method_names() if m not in ("none", "csg")]
    for m in baselines:
        runs = [c for c in g.runs if c.method == m]
        assert runs, f"{m} is missing from quick.yaml"
        assert all(c.target_params == budget for c in runs), m  # the budget resolved from CSG 16/72


def test_converged_is_the_study_its_issue_asks_for():
    """Plain and CSG 16/72 over 3 seeds at E, every baseline over 2 at E and CSG 16/72's budget, plain and
    CSG at 3 or more lengths, and fast91's two runs among its own (one store answers both files)."""
    g = grid.load(REPO / "configs" / "converged.yaml")
    E = max(c.epochs for c in g.runs)

    def key(c):
        return "plain" if c.method == "none" else f"{c.method}{c.method_args.get('code_dim', '')}"

    headline = [c for c in g.runs if c.flip == "alternating"]  # the fast recipe
    seeds = Counter(key(c) for c in headline if c.epochs == E)
    assert seeds["plain"] >= 3 and seeds["csg72"] >= 3
    budget = next(g.counts[c.hash()]["stored"] for c in g.runs if key(c) == "csg72")
    for m in (m for m in method_names() if m not in ("none", "csg")):
        assert seeds[m] >= 2, m
        assert all(c.target_params == budget for c in g.runs if c.method == m), m
    for k in ("plain", "csg72"):
        assert len({c.epochs for c in headline if key(c) == k}) >= 3, k
        quick_recipe = {c.seed for c in g.runs if key(c) == k and c.flip == "random"}
        assert len(quick_recipe) >= 2, k  # the recipe's fairness check
    fast = grid.load(REPO / "configs" / "fast91.yaml")
    assert {c.hash() for c in fast.runs} <= {c.hash() for c in g.runs}
