"""Sweep specs: every bad spec fails fast, before Ray, one line per problem naming the field."""
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from orchestrator import cli
from orchestrator.spec import SpecError, load_spec, parse_spec

ROOT = Path(__file__).resolve().parent.parent
GOOD = """
name: tiny
dataset: mnist5k
steps_per_task: 50
eval_every: 25
grid:
  psp: [none, binary]
  units: [32]
fixed:
  tasks: 3
"""

# (spec text, text the error must name). Each case breaks one thing in an otherwise good spec.
BAD_SPECS = {
    "unknown superposition type": ("grid: {psp: [binary, quantum]}", "grid.psp[1]"),
    "zero units": ("grid: {units: [0]}", "grid.units[0]"),
    "negative tasks": ("fixed: {tasks: -3}", "fixed.tasks"),
    "empty axis": ("grid: {seed: []}", "grid.seed"),
    "unknown top-level key": ("gird: {units: [32]}", "gird"),
    "unknown trial parameter": ("grid: {widht: [32]}", "grid.widht"),
    "wrong type in an axis": ("grid: {units: [many]}", "grid.units[0]"),
    "bool is not an int": ("grid: {units: [yes]}", "grid.units[0]"),
    "fractional units": ("grid: {units: [32.5]}", "grid.units[0]"),
    "axis is not a list": ("grid: {units: 32}", "grid.units"),
    "wrong type at top level": ("max_concurrent: two", "max_concurrent"),
    "unknown resource": ("resources: {cpu: 1, tpu: 1}", "resources.tpu"),
    "more than one GPU, fractional": ("resources: {gpu: 1.5}", "resources.gpu"),
    "negative GPU": ("resources: {gpu: -0.25}", "resources.gpu"),
    "list in fixed": ("fixed: {depth: [1, 2]}", "fixed.depth"),
    "grid and fixed both": ("grid: {lr: [0.001]}\nfixed: {lr: 0.01}", "fixed.lr"),
    "unknown dataset": ("dataset: imagenet", "dataset"),
    "zero learning rate": ("fixed: {lr: 0}", "fixed.lr"),
    "eval_every does not divide": ("eval_every: 30", "eval_every"),
    "unsupported storage scheme": ("storage: ftp://host/x", "storage"),
    "bad name": ("name: ../escape", "name"),
    "unknown smoke parameter": ("smoke: {widht: 3}", "smoke.widht"),
    "bad smoke value": ("smoke: {tasks: 0}", "smoke.tasks"),
    "max_failures below -1": ("max_failures: -2", "max_failures"),
    "pack of zero": ("pack: 0", "pack"),
    "pack: an unknown word": ("pack: sometimes", "pack"),
    "pack: a quoted number": ('pack: "4"', "pack"),
    "pack: true says no size": ("pack: true", "pack"),
    "pack: a fraction": ("pack: 2.5", "pack"),
    "cuda_graph on CPU trials": ("fixed: {tasks: 3, cuda_graph: true}", "fixed.cuda_graph"),
    "cuda_graph with learned keys": ("resources: {gpu: 1}\nfixed: {tasks: 3, cuda_graph: true, "
                                     "learn_context: true}", "cuda_graph"),
}


def write_spec(tmp_path: Path, change: str) -> Path:
    """GOOD with ``change`` merged in: keys it sets replace GOOD's top-level keys."""
    changed = parse_yaml(change)
    base = {k: v for k, v in parse_yaml(GOOD).items() if k not in changed}
    import yaml

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(base, sort_keys=False) + textwrap.dedent(change) + "\n")
    return path


def parse_yaml(text: str) -> dict:
    import yaml

    return yaml.safe_load(text) or {}


def launch(path, capsys) -> tuple[int, list[str]]:
    code = cli.main(["sweep", "launch", str(path)])
    err = capsys.readouterr().err
    return code, err.strip().splitlines()


@pytest.mark.parametrize("change, named", BAD_SPECS.values(), ids=BAD_SPECS.keys())
def test_bad_spec_fails_before_ray_naming_the_field(tmp_path, capsys, change, named):
    path = write_spec(tmp_path, change)
    start = time.perf_counter()
    code, lines = launch(path, capsys)
    assert time.perf_counter() - start < 1.0
    assert code == 2
    assert lines and all(line.startswith(f"{path}: ") for line in lines), lines
    assert any(f": {named}: " in line or f": {named} " in line for line in lines), lines
    assert not any("Traceback" in line for line in lines)


def test_yaml_syntax_error_names_file_and_line(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ngrid:\n  units: [32, 64\n  psp: [binary]\n")
    code, lines = launch(path, capsys)
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith(f"{path}:") and "invalid YAML" in lines[0]
    line_number = int(lines[0][len(str(path)) + 1:].split(":")[0])
    assert 3 <= line_number <= 4


@pytest.mark.parametrize("text, message", [("", "empty"), ("- a\n- b\n", "mapping")])
def test_spec_that_is_not_a_mapping(tmp_path, capsys, text, message):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    code, lines = launch(path, capsys)
    assert code == 2 and len(lines) == 1 and message in lines[0]


def test_missing_spec_file_is_one_line(tmp_path, capsys):
    code, lines = launch(tmp_path / "nope.yaml", capsys)
    assert code == 2 and lines == [f"{tmp_path / 'nope.yaml'}: no such file"]


def test_every_problem_is_reported_one_line_each(tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    path.write_text("grid: {units: [0, 64], psp: [quantum]}\nfixed: {tasks: -1}\ngird: 1\n")
    code, lines = launch(path, capsys)
    assert code == 2
    named = [line.split(": ")[1] for line in lines]
    assert {"grid.units[0]", "grid.psp[0]", "fixed.tasks", "gird"} <= set(named), lines
    assert "grid.units[1]" not in named


def test_bad_spec_in_a_fresh_process_imports_neither_ray_nor_torch(tmp_path):
    """The one-second bound holds because validation never imports Ray or torch."""
    path = write_spec(tmp_path, "grid: {units: [0]}")
    code = ("import sys; from orchestrator.cli import main; rc = main(['sweep', 'launch', sys.argv[1]]);"
            "print('ray' in sys.modules, 'torch' in sys.modules); sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                            text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 2
    assert result.stdout.split() == ["False", "False"]
    assert "grid.units[0]" in result.stderr and "Traceback" not in result.stderr


def test_bad_name_flag(tmp_path, capsys):
    path = write_spec(tmp_path, "")
    assert cli.main(["sweep", "launch", str(path), "--name", "a/b"]) == 2
    assert "--name" in capsys.readouterr().err


# ---- good specs ----------------------------------------------------------------------------
def test_good_spec_expands_to_its_grid():
    spec = parse_spec(GOOD, default_name="ignored")
    trials = spec.trials()
    assert spec.name == "tiny" and len(trials) == 2
    assert [t["psp"] for t in trials] == ["none", "binary"]
    assert all(t["units"] == 32 and t["tasks"] == 3 and t["steps_per_task"] == 50 for t in trials)


def test_yaml_12_floats_and_smoke_overrides():
    spec = parse_spec("fixed: {lr: 1e-4}\ngrid: {units: [64, 256]}\nsmoke: {units: [8], tasks: 2}\n",
                      default_name="from_file")
    assert spec.name == "from_file"
    assert spec.trials()[0]["lr"] == pytest.approx(1e-4)
    grid, fixed = spec.axes(smoke=True)
    assert grid == {"units": [8]} and fixed == {"lr": 1e-4, "tasks": 2}
    assert len(spec.trials()) == 2 and len(spec.trials(smoke=True)) == 1


@pytest.mark.parametrize("name, trials, smoke_trials", [("demo", 6, 3), ("paper_fig2", 10, 2)])
def test_shipped_specs_are_valid(name, trials, smoke_trials):
    spec = load_spec(ROOT / "sweeps" / f"{name}.yaml")
    assert spec.name == name
    assert len(spec.trials()) == trials and len(spec.trials(smoke=True)) == smoke_trials
    header = (ROOT / "sweeps" / f"{name}.yaml").read_text().split("\nname:")[0]
    assert "psp sweep launch" in header or "make demo" in header
    assert "Expected result" in header


def test_paper_fig2_matches_the_paper_setup():
    spec = load_spec(ROOT / "sweeps" / "paper_fig2.yaml")
    trials = spec.trials()
    assert {t["units"] for t in trials} == {128, 256, 512, 1024, 2048}
    assert {t["psp"] for t in trials} == {"none", "binary"}
    assert all(t["tasks"] == 50 and t["steps_per_task"] == 1000 for t in trials)
    assert spec.resources.gpu == 0.25 and spec.pack == "auto"


@pytest.mark.parametrize("text, pack", [("auto", "auto"), ("off", "off"), ("no", "off"),
                                        ('"off"', "off"), ("8", 8), ("1", 1)])
def test_pack_setting(text, pack):
    # an unquoted `off` is YAML's false: it still means off
    assert parse_spec(f"grid: {{seed: [0, 1]}}\npack: {text}\n").pack == pack
    assert parse_spec("grid: {seed: [0, 1]}\n").pack == "off"


def test_validation_is_fast_in_process():
    start = time.perf_counter()
    for _ in range(5):
        with pytest.raises(SpecError):
            parse_spec("grid: {units: [0, 1, 2, 3]}\nfixed: {tasks: -1}\n")
        load_spec(ROOT / "sweeps" / "paper_fig2.yaml")
    assert (time.perf_counter() - start) / 5 < 1.0


@pytest.mark.parametrize("name", ["icifar", "rotating_mnist", "rotating_psp_types", "ewc_si",
                                  "ewc_si_zenke"])
def test_experiment_spec_headers_say_source_run_and_measured_numbers(name):
    """Each header names its source (or says it reproduces none), how to run it, and the numbers
    measured here at smoke size and at a minutes size — or, for CIFAR, why not."""
    text = (ROOT / "sweeps" / f"{name}.yaml").read_text()
    header = text.split("\nname:")[0]
    assert load_spec(ROOT / "sweeps" / f"{name}.yaml").name == name
    assert header.startswith("# SOURCE: ") or "own comparison, not a reproduction" in header
    assert "psp sweep launch sweeps/" + name + ".yaml" in header
    assert "Run time" in header and "Measured here" in header and "smoke" in header
    assert "minutes size" in header or "not on this machine" in header
    assert not any(marker in header for marker in ("SMOKE_NUMBERS", "MINUTES_", "TODO"))
