"""`psp run`: one local trial into a Parquet file that pandas reads with no psplab code."""
import subprocess
import sys

import pandas as pd
import pytest

from trainables import schema
from trainables.config import TrialConfig

PSP = [sys.executable, "-m", "orchestrator.cli"]


def psp(*args, **kwargs):
    return subprocess.run([*PSP, *args], capture_output=True, text=True, timeout=300, **kwargs)


def test_psp_run_writes_a_parquet_file_pandas_reads(tmp_path):
    """As a new user types it: a task length the default eval_every (100) does not divide,
    into a directory that does not exist yet. The default then tests once per task: task 0
    after step 50; tasks 0 and 1 after step 100."""
    out = tmp_path / "new" / "dir" / "run.parquet"
    result = psp("run", "--psp", "binary", "--units", "32", "--tasks", "2", "--steps-per-task", "50",
                 "--dataset", "mnist5k", "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    df = pd.read_parquet(out)
    assert list(df.columns) == schema.STEPS_SCHEMA.names
    assert len(df[df.split == "train"]) == 100
    tests = df.query("split == 'test'")
    assert sorted(zip(tests.step, tests.eval_task.astype(int))) == [(50, 0), (100, 0), (100, 1)]
    assert (df.psp == "binary").all() and (df.units == 32).all() and (df.eval_every == 50).all()
    trials = pd.read_parquet(out.parent / "run.trials.parquet")
    assert trials.status.tolist() == ["completed"] and trials.steps_done.tolist() == [100]


def test_runs_into_a_store_are_compared_by_results_and_plots(tmp_path, capsys):
    """`psp run --store DIR` twice, then the analysis commands on DIR: two trials side by side."""
    from orchestrator.cli import main

    store = tmp_path / "runs"
    for kind in ("none", "binary"):
        assert main(["run", "--psp", kind, "--units", "16", "--tasks", "2", "--steps-per-task",
                     "20", "--store", str(store), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["results", str(store)]) == 0
    out = capsys.readouterr().out
    assert "2 trial(s)" in out and " none " in out and " binary " in out, out
    assert main(["plots", str(store), "--out", str(tmp_path / "figures"), "--n-boot", "10"]) == 0
    assert (tmp_path / "figures" / "index.md").is_file()
    steps = pd.read_parquet(store / "steps")  # a normal store: pandas alone reads it
    assert steps.trial_id.nunique() == 2 and len(steps[steps.split == "train"]) == 2 * 40


def test_psp_run_help_says_what_every_option_is(tmp_path):
    """Each option of `psp run --help` has its line, taken from TrialConfig's descriptions."""
    result = psp("run", "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    for name, field in TrialConfig.model_fields.items():
        assert field.description, f"TrialConfig.{name} has no description"
        flag = "--" + name.replace("_", "-")
        assert flag in text, flag
        assert " ".join(field.description.split()) in text, f"{flag}: no description in --help"
    assert "--store DIR" in text and "--out OUT" in text


def test_psp_run_refuses_to_overwrite(tmp_path):
    out = tmp_path / "run.parquet"
    out.write_bytes(b"precious")
    result = psp("run", "--tasks", "1", "--steps-per-task", "10", "--eval-every", "5",
                 "--out", str(out))
    assert result.returncode == 2
    assert str(out) in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert out.read_bytes() == b"precious"


@pytest.mark.parametrize("args, named", [
    (["--units", "0"], "--units"),
    (["--units", "many"], "--units"),
    (["--psp", "quantum"], "--psp"),
    (["--tasks", "-3"], "--tasks"),
    (["--lr", "0"], "--lr"),
    (["--steps-per-task", "100", "--eval-every", "30"], "eval_every"),
    (["--bogus-flag", "1"], "--bogus-flag"),
    (["--dataset", "imagenet"], "--dataset"),
])
def test_bad_arguments_get_one_line_naming_the_argument(tmp_path, args, named):
    result = psp("run", *args, "--out", str(tmp_path / "x.parquet"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.parquet").exists()


def test_trial_config_and_schema_agree():
    assert set(schema.PARAM_FIELDS) <= set(TrialConfig.model_fields)
    assert set(TrialConfig().identity()) == set(schema.PARAM_FIELDS)


def test_steps_table_rejects_unknown_fields_and_splits():
    params = TrialConfig().identity()
    with pytest.raises(schema.SchemaError, match="accuracyy"):
        schema.steps_table([{"step": 1, "split": "train", "accuracyy": 0.5}], params,
                           sweep=None, trial_id="t", attempt=0)
    with pytest.raises(schema.SchemaError, match="split"):
        schema.steps_table([{"step": 1, "split": "valid"}], params, sweep=None, trial_id="t",
                           attempt=0)
