"""Grid files: YAML -> validated, resolved `RunConfig`s, all checked before any training starts.

```yaml
name: quick                 # MLflow experiment (default: the file's stem)
description: free text      # shown in the report; say the budget here
output: quick               # optional sub-folder of the output root for checkpoints
defaults: {arch: resnet20, epochs: 15, schedule: onecycle}
grid:                       # each block: list values expand as a cartesian product
  - {method: none, seed: [0, 1]}
  - {method: csg, method_args: {slice: 16, code_dim: [8, 16, 72]}}
  - method: [prune, width]
    target_params: {method: csg, method_args: {slice: 16, code_dim: 72}}   # "as many as CSG 16/72"
runs:                       # explicit runs, not expanded
  - {name: my-run, method: csg, method_args: {slice: 12, code_dim: 72}}
```
A `target_params` mapping names another configuration on the same architecture: the target is that
model's own budget count (CSG: `stored`).  Every problem raises `GridError` with one line naming the
file, the key and what is allowed.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import yaml

from study.config import RunConfig
from study.methods import BudgetError, build, get_method
from study.models import get_arch

GRID_KEYS = {"name", "description", "output", "defaults", "grid", "runs"}


class GridError(ValueError):
    pass


@dataclass(frozen=True)
class Grid:
    name: str
    path: Path
    description: str
    output: str
    runs: tuple[RunConfig, ...]
    resolved_args: dict[str, dict]  # config hash -> method args after any budget search
    counts: dict[str, dict]         # config hash -> accounting counts (no FLOPs)


def _expand(block: dict) -> list[dict]:
    """Cartesian product over list values, including inside `method_args` (milestones stay lists)."""
    flat = dict(block)
    args = flat.pop("method_args", {}) or {}
    axes = [(k, v) for k, v in flat.items() if isinstance(v, list) and k != "milestones"]
    arg_axes = [(k, v) for k, v in args.items() if isinstance(v, list)]
    out = []
    for combo in itertools.product(*[v for _, v in axes], *[v for _, v in arg_axes]):
        run = {**flat, **dict(zip([k for k, _ in axes], combo[:len(axes)]))}
        run["method_args"] = {**args, **dict(zip([k for k, _ in arg_axes], combo[len(axes):]))}
        out.append(run)
    return out


def default_name(run: dict) -> str:
    method, args = run.get("method", "none"), run.get("method_args", {}) or {}
    if method == "csg":
        tag = f"csg{args.get('slice', 16)}x{args.get('code_dim', 72)}"
        tag += "".join(f"-{v}" for k, v in sorted(args.items())
                       if k in ("layout", "generator", "policy") and v not in ("contiguous", "learned", "authors"))
    elif method == "none":
        tag = "plain"
    else:
        tag = method + "".join(f"-{k}{v}" for k, v in sorted(args.items()))
        if run.get("target_params") is not None:
            tag += "-matched"
    return f"{run.get('arch', RunConfig.arch)}-{tag}-s{run.get('seed', 0)}"


def _where(path: Path, key: str) -> str:
    return f"{path}: {key}"


def load(path: str | Path) -> Grid:
    path = Path(path)
    if not path.is_file():
        raise GridError(f"{path}: no such grid file")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise GridError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise GridError(f"{path}: expected a mapping with keys {sorted(GRID_KEYS)}")
    unknown = set(doc) - GRID_KEYS
    if unknown:
        raise GridError(f"{path}: unknown key {sorted(unknown)[0]!r}; allowed: {', '.join(sorted(GRID_KEYS))}")
    output = str(doc.get("output") or "")
    if Path(output).is_absolute() or ".." in Path(output).parts:
        raise GridError(f"{_where(path, 'output')}: {output!r} must be a relative folder inside the output root")
    defaults = doc.get("defaults") or {}
    blocks = doc.get("grid") or []
    explicit = doc.get("runs") or []
    if not isinstance(defaults, dict) or not isinstance(blocks, list) or not isinstance(explicit, list):
        raise GridError(f"{path}: 'defaults' must be a mapping, 'grid' and 'runs' lists of mappings")
    raw: list[tuple[str, dict]] = []
    for i, block in enumerate(blocks):
        if not isinstance(block, dict):
            raise GridError(f"{_where(path, f'grid[{i}]')}: expected a mapping")
        raw += [(f"grid[{i}]", {**defaults, **r, "method_args": {**(defaults.get("method_args") or {}),
                                                                  **r["method_args"]}})
                for r in _expand(block)]
    for i, run in enumerate(explicit):
        if not isinstance(run, dict):
            raise GridError(f"{_where(path, f'runs[{i}]')}: expected a mapping")
        raw.append((f"runs[{i}]", {**defaults, **run}))
    if not raw:
        raise GridError(f"{path}: the grid defines no runs (add 'grid' blocks or 'runs')")

    configs, resolved, counts, seen = [], {}, {}, {}
    for where, run in raw:
        cfg, args, count = _resolve(path, where, run)
        h = cfg.hash()
        if h in seen:
            raise GridError(f"{_where(path, where)}: duplicates {seen[h]} (same resolved config)")
        seen[h] = where
        configs.append(cfg)
        resolved[h], counts[h] = args, count
    return Grid(doc.get("name") or path.stem, path, str(doc.get("description") or ""), output,
                tuple(configs), resolved, counts)


def _resolve(path: Path, where: str, run: dict) -> tuple[RunConfig, dict, dict]:
    from study import accounting

    unknown = set(run) - set(RunConfig.keys())
    if unknown:
        raise GridError(f"{_where(path, where)}: unknown key {sorted(unknown)[0]!r}; "
                        f"allowed: {', '.join(RunConfig.keys())}")
    run = {k: v for k, v in run.items() if v is not None or k in ("target_params",)}
    run.setdefault("name", default_name(run))
    try:
        arch = get_arch(run.get("arch", RunConfig.arch))
        method = get_method(run.get("method", RunConfig.method))
        method_args = method.args(dict(run.get("method_args") or {}))
        target = run.get("target_params")
        if isinstance(target, dict):  # "as many parameters as that configuration"
            ref = get_method(target.get("method", "csg"))
            ref_args = ref.args(dict(target.get("method_args") or {}))
            ref_model = ref.build(arch, ref_args)
            target = ref.counted(ref_model, arch, ref_args)
            run["target_params"] = int(target)
        elif target is not None and (not isinstance(target, int) or target <= 0):
            raise ValueError(f"target_params must be a positive integer or a mapping naming a configuration, "
                             f"got {target!r}")
        cfg = RunConfig.from_dict({**run, "method_args": method_args})
        model, args = build(cfg.arch, cfg.method, method_args, seed=cfg.seed, target_params=cfg.target_params)
        count = accounting.count_parameters(method.final_model(model, args))
    except (BudgetError, ValueError, TypeError) as e:
        raise GridError(f"{_where(path, where)} ({run['name']}): {str(e).splitlines()[0]}") from None
    return cfg, args, count
