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
    out = tmp_path / "run.parquet"
    result = psp("run", "--psp", "binary", "--units", "32", "--tasks", "2", "--steps-per-task", "50",
                 "--eval-every", "25", "--dataset", "mnist5k", "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    df = pd.read_parquet(out)
    assert list(df.columns) == schema.STEPS_SCHEMA.names
    assert len(df[df.split == "train"]) == 100
    assert set(df.query("split == 'test'").eval_task.dropna().astype(int)) == {0, 1}
    assert (df.psp == "binary").all() and (df.units == 32).all()
    trials = pd.read_parquet(tmp_path / "run.trials.parquet")
    assert trials.status.tolist() == ["completed"] and trials.steps_done.tolist() == [100]


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
