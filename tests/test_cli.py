"""The command-line contract for bad input: exit status 2, exactly one line on stderr, no traceback,
and nothing trained or written."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from conftest import REPO
from study.cli import main

GOOD_RUN = {"arch": "resnet20", "epochs": 1, "train_subset": 256, "val_size": 256, "test_subset": 256}


def _grid(tmp_path, doc, name="g.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc) if not isinstance(doc, str) else doc)
    return path


def _cases(tmp_path, data_root):
    """(id, argv, text the line must mention) for every bad argument of the contract."""
    g = lambda doc, name="g.yaml": str(_grid(tmp_path, doc, name))  # noqa: E731
    run = ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--output", str(tmp_path / "out"),
           "--data-root", str(data_root)]
    return {
        "unknown arch": (["params", "--arch", "resnet21", "--json"], "resnet21"),
        "unknown method": (["params", "--arch", "resnet20", "--method", "magic", "--json"], "magic"),
        "code-dim 0": (["params", "--arch", "resnet20", "--method", "csg", "--code-dim", "0"], "0"),
        "code-dim abc": (["params", "--arch", "resnet20", "--method", "csg", "--code-dim", "abc"], "abc"),
        "slice -3": (["params", "--arch", "resnet20", "--method", "csg", "--slice", "-3"], "-3"),
        "csg flag on plain": (["params", "--arch", "resnet20", "--code-dim", "8"], "--code-dim"),
        "unknown method arg": (["params", "--arch", "resnet20", "--method", "csg", "--arg", "colour=red"], "colour"),
        "target below reachable": (["params", "--arch", "resnet20", "--method", "csg", "--target-params", "1000",
                                    "--json"], "1000"),
        "missing checkpoint": (["evaluate-authors", str(tmp_path / "nope.t7"), "--arch", "resnet56",
                                "--data-root", str(data_root)], "nope.t7"),
        "missing data root (evaluate)": (["evaluate-authors", str(tmp_path / "nope.t7"), "--arch", "resnet56",
                                          "--data-root", "/nonexistent"], "/nonexistent"),
        "bad grid path": (["run", str(tmp_path / "missing.yaml"), *run], "missing.yaml"),
        "grid not yaml": (["run", g("defaults: [unclosed", "broken.yaml"), *run], "broken.yaml"),
        "grid unknown top key": (["run", g({"grdi": [{"method": "none"}]}, "top.yaml"), *run], "grdi"),
        "grid unknown run key": (["run", g({"defaults": GOOD_RUN, "grid": [{"method": "none", "epoch": 3}]},
                                           "runkey.yaml"), *run], "epoch"),
        "grid unknown arch": (["run", g({"defaults": {**GOOD_RUN, "arch": "resnet21"}, "grid": [{"method": "none"}]},
                                        "arch.yaml"), *run], "resnet21"),
        "grid code_dim -1": (["run", g({"defaults": GOOD_RUN, "grid": [{"method": "csg",
                                                                        "method_args": {"code_dim": -1}}]},
                                       "dim.yaml"), *run], "code_dim"),
        "grid unknown method": (["run", g({"defaults": GOOD_RUN, "grid": [{"method": "magic"}]}, "m.yaml"), *run],
                                "magic"),
        "grid empty": (["run", g({"defaults": GOOD_RUN}, "empty.yaml"), *run], "empty.yaml"),
        "missing data root (run)": (["run", g({"defaults": GOOD_RUN, "grid": [{"method": "none"}]}, "ok.yaml"),
                                     "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                                     "--output", str(tmp_path / "out"), "--data-root", "/nonexistent"],
                                    "/nonexistent"),
        "unknown command": (["train", "x.yaml"], "train"),
        "no command": ([], "python -m study"),
    }


IDS = ["unknown arch", "unknown method", "code-dim 0", "code-dim abc", "slice -3", "csg flag on plain",
       "unknown method arg", "target below reachable", "missing checkpoint", "missing data root (evaluate)",
       "bad grid path", "grid not yaml", "grid unknown top key", "grid unknown run key", "grid unknown arch",
       "grid code_dim -1", "grid unknown method", "grid empty", "missing data root (run)", "unknown command",
       "no command"]


@pytest.mark.parametrize("case", IDS)
def test_bad_argument_exits_2_with_one_line(case, tmp_path, data_root, capsys):
    cases = _cases(tmp_path, data_root)
    assert set(cases) == set(IDS)
    argv, mention = cases[case]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (case, out, err)
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, (case, err)
    assert "Traceback" not in err and lines[0].strip()
    assert mention in lines[0], (case, lines[0])
    assert out == ""
    # nothing was trained or tracked
    assert not (tmp_path / "mlflow.db").exists()


def test_bad_arguments_through_the_real_process(tmp_path, data_root):
    """The same contract from `python -m study`: the process's own stderr, no warnings around the line.
    Three representative cases, started together to save wall time."""
    cases = _cases(tmp_path, data_root)
    chosen = ["code-dim abc", "grid unknown run key", "missing data root (run)"]
    procs = {c: subprocess.Popen([sys.executable, "-m", "study", *cases[c][0]], cwd=REPO, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for c in chosen}
    for case, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, (case, err)
        lines = err.strip("\n").splitlines()
        assert len(lines) == 1 and "Traceback" not in err, (case, err)
        assert cases[case][1] in lines[0]
        assert out == ""


def test_dry_run_lists_the_grid_and_trains_nothing(tmp_path, data_root, capsys):
    path = _grid(tmp_path, {"name": "dry", "defaults": GOOD_RUN,
                            "grid": [{"method": "none"}, {"method": "csg", "method_args": {"code_dim": 72}}]})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["run", str(path), "--dry-run", "--tracking-uri", uri, "--output", str(tmp_path / "out"),
                 "--data-root", str(data_root)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "2 runs" in out and "269,722" in out and "176,698" in out
    assert out.count("pending") == 2
    assert not list((tmp_path / "out").glob("**/*.pt"))


def test_params_json_keys(capsys):
    import json

    assert main(["params", "--arch", "resnet20", "--method", "csg", "--code-dim", "72", "--no-flops", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("total", "trainable", "frozen", "stored", "nonzero", "bytes_on_disk"):
        assert isinstance(out[key], int)
    assert out["total"] == 176_698


def test_target_params_matches_within_tolerance(capsys):
    import json

    assert main(["params", "--arch", "resnet20", "--method", "csg", "--target-params", "176698", "--no-flops",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["knob"] == "code_dim" and out["knob_value"] == 72 and out["stored"] == 176_698
    assert abs(out["relative_error"]) <= 0.01
