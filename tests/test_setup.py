"""The install and entry points agree: environment.yml and pyproject.toml pin the same packages,
CI runs the README's test command, and the README's quick start is exactly the two commands."""
from __future__ import annotations

import os
import re
import shlex
import tomllib

import yaml
from packaging.requirements import Requirement

from conftest import REPO

PINNED = {"torch": "==2.14.1", "torchvision": "==0.29.1"}


def _pyproject():
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _env_pip() -> list[str]:
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip) == 1, "environment.yml needs exactly one pip: list"
    return pip[0]


def _requirements(lines) -> dict[str, Requirement]:
    out = {}
    for line in lines:
        if line.startswith("-") or line.strip() in (".", ""):  # `-e .`, options
            continue
        req = Requirement(line)
        name = req.name.lower().replace("_", "-")
        assert name not in out, f"{name} listed twice"
        out[name] = req
    return out


def test_pyproject_dependencies_are_pinned_identically_in_environment_yml():
    project = _pyproject()["project"]
    py = _requirements(project["dependencies"])
    extras = _requirements(dep for deps in project.get("optional-dependencies", {}).values() for dep in deps)
    env = _requirements(_env_pip())
    for name, req in {**py, **extras}.items():
        assert name in env, f"{name} is in pyproject.toml but not in environment.yml's pip list"
        assert env[name].specifier == req.specifier, (name, str(env[name].specifier), str(req.specifier))
        assert env[name].extras == req.extras, name
    missing = set(env) - set(py) - set(extras)
    assert not missing, f"environment.yml pins {sorted(missing)} that pyproject.toml does not"
    for name, spec in PINNED.items():
        assert str(py[name].specifier) == spec and str(env[name].specifier) == spec, name


def test_environment_yml_installs_the_project_itself():
    assert any(re.fullmatch(r"-e\s+\.", line.strip()) for line in _env_pip())


def test_installed_torch_is_the_pinned_one():
    import torch
    import torchvision

    assert torch.__version__.split("+")[0] == PINNED["torch"][2:]
    assert torchvision.__version__.split("+")[0] == PINNED["torchvision"][2:]


def test_ci_runs_the_readme_test_command():
    ci = REPO / ".ci" / "run"
    assert ci.is_file() and os.access(ci, os.X_OK), ".ci/run must be an executable script"
    commands = [line.strip() for line in ci.read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    calls = [c for c in commands if "tests/run.sh" in shlex.split(c)]
    assert calls, f".ci/run does not call tests/run.sh: {commands}"
    words = shlex.split(calls[-1])
    at = words.index("tests/run.sh")
    assert words[at - 1] == "bash" and words[at + 1:] in ([], ["$@"]), words  # its own arguments at most
    run_sh = (REPO / "tests" / "run.sh").read_text()
    assert "pytest" in run_sh


def _quick_start_commands() -> list[str]:
    readme = REPO / "README.md"
    assert readme.is_file(), "README.md is missing"
    text = readme.read_text()
    section = re.search(r"^## Quick start\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert section, "README.md has no '## Quick start' section"
    block = re.search(r"^```bash\s*$(.*?)^```\s*$", section.group(1), re.M | re.S)
    assert block, "the quick start has no ```bash block"
    return [line.strip() for line in block.group(1).splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_readme_quick_start_is_exactly_the_two_commands():
    assert _quick_start_commands() == ["bash run_all.sh", "bash tests/run.sh"]
    for script in ("run_all.sh", "tests/run.sh"):
        assert (REPO / script).is_file(), script
