"""Grid files: YAML -> validated, resolved `RunConfig`s, all checked before any training starts.

```yaml
name: quick                 # MLflow experiment (default: the file's stem)
description: free text      # shown in the report; say the budget here
output: quick               # optional sub-folder of the output root for checkpoints
checkpoint_minutes: 30      # optional: also checkpoint mid-epoch this often (not part of any run's hash)
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

A run may depend on another: `method: csg, method_args: {generator: reuse, generator_from: NAME}`
trains with the frozen generator of the run called NAME in the same grid (same slice size, code
dimension and kernel size, checked here).  The source's config hash joins the dependant's method
arguments as `generator_from_hash`, so the dependant's own hash changes with its source.  `runs` lists
every source before its dependants (otherwise in file order) and `depends` maps a dependant's hash
to its source's.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from study.args import non_negative_seconds
from study.config import RunConfig
from study import methods
from study.methods import BudgetError, get_method
from study.schema import CSG_DEFAULTS, CSG_LABEL_DEFAULTS, PLAIN
from study.models import get_arch

GRID_KEYS = {"name", "description", "output", "checkpoint_minutes", "defaults", "grid", "runs"}


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
    depends: dict[str, str] = field(default_factory=dict)  # dependant's hash -> its source's (reuse)
    checkpoint_minutes: float | None = None  # mid-epoch checkpoints this often; how, not what: no run's hash

    def checkpoint_root(self, output_root: Path) -> Path:
        """Where the runs of this grid keep their checkpoints (one folder per config hash) under `output_root`."""
        return output_root / self.output / "checkpoints" if self.output else output_root / "checkpoints"

    def source_of(self, cfg: RunConfig) -> RunConfig | None:
        """The run whose generator `cfg` reuses, or None."""
        h = self.depends.get(cfg.hash())
        return next((c for c in self.runs if c.hash() == h), None) if h else None


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
        tag = f"csg{args.get('slice', CSG_DEFAULTS['slice'])}x{args.get('code_dim', CSG_DEFAULTS['code_dim'])}"
        tag += "".join(f"-{v}" for k, v in sorted(args.items())
                       if k in CSG_LABEL_DEFAULTS and v != CSG_LABEL_DEFAULTS[k])
    elif method == PLAIN:
        tag = "plain"
    else:
        tag = method + "".join(f"-{k}{v}" for k, v in sorted(args.items()))
        if run.get("target_params") is not None:
            tag += "-matched"
    return f"{run.get('arch', RunConfig.arch)}-{tag}-s{run.get('seed', 0)}"


def _where(path: Path, key: str) -> str:
    return f"{path}: {key}"


def _read(path: Path) -> tuple[dict, str, float | None, list[tuple[str, dict]]]:
    """(the document, its output folder, its checkpoint minutes, every run as (where, raw run dict)),
    checked key by key; nothing resolved yet."""
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
    minutes = doc.get("checkpoint_minutes")
    try:
        if isinstance(minutes, str):  # a YAML number, not text; otherwise the command line's rule
            raise ValueError(minutes)
        if minutes is not None:
            non_negative_seconds(minutes)
    except ValueError:
        raise GridError(f"{_where(path, 'checkpoint_minutes')}: expected a number of minutes >= 0 (0: only at "
                        f"the end of each epoch), got {minutes!r}") from None
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
    return doc, output, minutes, raw


def resolve_run(path: str | Path, method: str) -> RunConfig:
    """The `RunConfig` of the first run of `method` in a grid file, resolved as `load` resolves it but
    not planned (its network is not built, no knob searched): for a reader that needs one run's settings
    (the bench's fast recipe).  A `target_params` naming another configuration still builds that one."""
    path = Path(path)
    for where, run in _read(path)[3]:
        if run.get("method", RunConfig.method) == method:
            return _config(path, where, run)[0]
    raise GridError(f"{path}: no run of method {method!r}")


def load(path: str | Path) -> Grid:
    path = Path(path)
    doc, output, minutes, raw = _read(path)
    configs, resolved, counts, seen, depends = [], {}, {}, {}, {}
    by_name: dict[str, RunConfig] = {}
    for i in _dependency_order(path, raw):
        where, run = raw[i]
        source = _source_name(run)
        if source is not None:  # the source is resolved already: its hash joins this run's arguments
            run = {**run, "method_args": {**(run.get("method_args") or {}), "generator_from_hash": by_name[source].hash()}}
        cfg, args, count = _resolve(path, where, run)
        h = cfg.hash()
        if h in seen:
            raise GridError(f"{_where(path, where)}: duplicates {seen[h]} (same resolved config)")
        if source is not None:
            _check_reuse(path, where, cfg, args, by_name[source], resolved[by_name[source].hash()])
            depends[h] = by_name[source].hash()
        seen[h] = where
        by_name.setdefault(cfg.name, cfg)
        configs.append(cfg)
        resolved[h], counts[h] = args, count
    return Grid(doc.get("name") or path.stem, path, str(doc.get("description") or ""), output,
                tuple(configs), resolved, counts, depends, float(minutes) if minutes else None)


# -- runs that depend on other runs (generator reuse) --------------------------------------------
def _name(run: dict) -> str:
    """The run's name: its `name`, else `default_name`.  A name with braces is a template over the
    run's keys and `{default}` (e.g. `"{default}-e{epochs}"`), so one grid block that expands over
    several values still names each run apart."""
    given = {k: v for k, v in run.items() if v is not None}
    name = run.get("name")
    if name is None:
        return default_name(given)
    if "{" not in str(name):
        return name
    try:
        return str(name).format(default=default_name(given), **{k: v for k, v in given.items() if k != "name"})
    except (KeyError, IndexError, ValueError) as e:
        raise GridError(f"name template {name!r}: {e} is not a key of the run") from None


def _source_name(run: dict) -> str | None:
    args = run.get("method_args") or {}
    return args.get("generator_from") if run.get("method", RunConfig.method) == "csg" else None


def _dependency_order(path: Path, raw: list[tuple[str, dict]]) -> list[int]:
    """Indices of `raw`, every source before the runs that reuse it, otherwise in file order."""
    names: dict[str, list[int]] = {}
    for i, (_, run) in enumerate(raw):
        names.setdefault(_name(run), []).append(i)
    source: dict[int, int] = {}
    for i, (where, run) in enumerate(raw):
        args = run.get("method_args") or {}
        reuse = run.get("method", RunConfig.method) == "csg" and args.get("generator") == "reuse"
        wanted = _source_name(run)
        label = f"{_where(path, where)} ({_name(run)})"
        if reuse and wanted is None:
            raise GridError(f"{label}: generator: reuse needs generator_from: <the name of a run in this grid>")
        if wanted is None:
            continue
        if not isinstance(wanted, str):
            raise GridError(f"{label}: generator_from must be a run name, got {wanted!r}")
        if "generator_from_hash" in args:
            raise GridError(f"{label}: generator_from_hash is set by the grid from generator_from; remove it")
        found = names.get(wanted, [])
        if not found:
            raise GridError(f"{label}: generator_from {wanted!r} names no run of this grid "
                            f"(runs: {', '.join(sorted(names)[:6])}{', ...' if len(names) > 6 else ''})")
        if len(found) > 1:
            raise GridError(f"{label}: generator_from {wanted!r} is the name of {len(found)} runs; give them distinct names")
        if found[0] == i:
            raise GridError(f"{label}: generator_from names the run itself")
        source[i] = found[0]
    order, placed = [], set()
    while len(order) < len(raw):
        ready = [i for i in range(len(raw)) if i not in placed and (i not in source or source[i] in placed)]
        if not ready:
            where, run = raw[min(set(range(len(raw))) - placed)]
            raise GridError(f"{_where(path, where)} ({_name(run)}): generator_from forms a cycle")
        order.append(ready[0])
        placed.add(ready[0])
    return order


def _check_reuse(path: Path, where: str, cfg: RunConfig, args: dict, src: RunConfig, src_args: dict) -> None:
    """The source trains a generator of the very shape this run needs: same slice, code dim, kernel size."""
    label = f"{_where(path, where)} ({cfg.name})"
    if src.method != "csg" or src_args.get("generator") == "binary":
        what = "a random-binary generator" if src.method == "csg" else f"method {src.method!r}"
        raise GridError(f"{label}: generator_from {src.name!r} trains no generator to reuse ({what}); "
                        "name a CSG run with a learned generator")
    csg = get_method("csg")
    mine, theirs = csg.generator_shape(cfg.arch, args), csg.generator_shape(src.arch, src_args)
    if mine != theirs:
        raise GridError(f"{label}: generator_from {src.name!r} has slice/code_dim/kernel {'/'.join(map(str, theirs))}, "
                        f"this run needs {'/'.join(map(str, mine))}; they must match")


def _resolve(path: Path, where: str, run: dict) -> tuple[RunConfig, dict, dict]:
    """(config, resolved method args, accounting counts of the network as training ends it)."""
    cfg, method_args = _config(path, where, run)
    try:
        args, count = methods.plan(cfg.arch, cfg.method, method_args, seed=cfg.seed, target_params=cfg.target_params,
                                   epochs=cfg.epochs)
    except (BudgetError, ValueError, TypeError) as e:
        raise GridError(f"{_where(path, where)} ({cfg.name}): {str(e).splitlines()[0]}") from None
    return cfg, args, count


def _config(path: Path, where: str, run: dict) -> tuple[RunConfig, dict]:
    """(config, the method's arguments with its defaults) of one raw run, its keys and values checked."""
    unknown = set(run) - set(RunConfig.keys())
    if unknown:
        raise GridError(f"{_where(path, where)}: unknown key {sorted(unknown)[0]!r}; "
                        f"allowed: {', '.join(RunConfig.keys())}")
    run = {k: v for k, v in run.items() if v is not None or k in ("target_params",)}
    try:
        run["name"] = _name(run)
    except GridError as e:
        raise GridError(f"{_where(path, where)}: {e}") from None
    try:
        arch_name = get_arch(run.get("arch", RunConfig.arch)).name
        method = get_method(run.get("method", RunConfig.method))
        method_args = method.args(dict(run.get("method_args") or {}))
        target = run.get("target_params")
        if isinstance(target, dict):  # "as many parameters as that configuration"
            run["target_params"] = methods.budget_of(arch_name, target.get("method", "csg"), target.get("method_args"))
        elif target is not None and (not isinstance(target, int) or target <= 0):
            raise ValueError(f"target_params must be a positive integer or a mapping naming a configuration, "
                             f"got {target!r}")
        cfg = RunConfig.from_dict({**run, "method_args": method_args})
    except (BudgetError, ValueError, TypeError) as e:
        raise GridError(f"{_where(path, where)} ({run['name']}): {str(e).splitlines()[0]}") from None
    return cfg, method_args
