"""`psp sweep launch`, `status` and `resume`: refusals, and the GPU check. The demo spec end to end
runs on S3 storage in test_sweep_s3.py."""
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_status_of_an_unknown_sweep(tmp_path, psp):
    result = psp("sweep", "status", "nope", "--storage", str(tmp_path), timeout=60)
    assert result.returncode == 2 and "nope" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_resume_of_an_unknown_sweep(tmp_path, psp):
    result = psp("sweep", "resume", "nope", "--storage", str(tmp_path), timeout=60)
    assert result.returncode == 2 and "no sweep 'nope'" in result.stderr


@pytest.mark.slow
def test_gpu_spec_on_a_machine_without_gpus_is_refused(tmp_path, ray_local):
    """An embedded Ray would wait forever for a GPU; say so instead."""
    from orchestrator.cli import UserError
    from orchestrator.launch import launch
    from orchestrator.spec import load_spec

    spec = load_spec(ROOT / "sweeps" / "paper_fig2.yaml")
    with pytest.raises(UserError, match="GPU"):
        launch(spec, storage=str(tmp_path), smoke=True)
    assert not (tmp_path / "paper_fig2").exists()  # refused before anything was written


def test_store_reads_back_with_the_project_reader(tmp_path):
    """The trials rows written by the trainable go through the project's reader too."""
    from orchestrator.store import Store
    from orchestrator.trainable import read_trial_row
    from trainables import schema

    store = Store(str(tmp_path / "results"))
    store.initialise()
    assert read_trial_row(store, "abc_00000") is None
    record = {"sweep": "s", "trial_id": "abc_00000", "attempt": 2, "status": "running",
              **schema.param_row({"psp": "binary", "units": 32})}
    store.write_trial(record)
    assert read_trial_row(store, "abc_00000")["attempt"] == 2
    assert isinstance(store.read_trials(), pd.DataFrame)


FAILING = """
name: failing
dataset: mnist5k
steps_per_task: 50
eval_every: 25
grid:
  device: [cpu, "cuda:99"]     # cuda:99 exists nowhere: that trial raises
fixed: {psp: none, units: 32, tasks: 2, lr: 1.0e+9, optimizer: sgd}   # cpu one diverges
max_failures: 0
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_diverged_trial_is_a_result_and_an_error_is_reported(tmp_path, ray_local, capsys):
    """Divergence ends a trial normally (no retry) with its rows up to the NaN; an exception
    marks it 'error', and `psp sweep status` shows the error file's first line."""
    from orchestrator.launch import launch, sweep_status
    from orchestrator.spec import parse_spec

    spec = parse_spec(FAILING)
    assert launch(spec, storage=str(tmp_path), verbose=0) == 1
    store = tmp_path / "failing" / "results"
    trials = pd.read_parquet(store / "trials").set_index("device", drop=False)
    steps = pd.read_parquet(store / "steps")
    diverged = trials[trials.status == "diverged"].iloc[0]
    assert diverged.steps_done < 50 and diverged.attempt == 0
    mine = steps[steps.trial_id == diverged.trial_id]
    assert mine.step.max() == diverged.steps_done and not mine.duplicated(["step", "split", "eval_task"]).any()
    failed = trials[trials.status == "error"].iloc[0]
    assert "cuda" in failed.error.lower() or "CUDA" in failed.error
    status = sweep_status("failing", str(tmp_path))
    assert "ERROR 1" in status and "TERMINATED 1" in status
    error_line = [line for line in status.splitlines() if line.startswith(f"  {failed.trial_id}: ")]
    assert len(error_line) == 1 and "Failure # 1" in error_line[0] and "error.txt" in error_line[0]

    # Tune's restore copies every *.json at the experiment's top level down and uploads it back,
    # rewriting it in place: a driver killed mid-copy once left psplab's sweep record there
    # empty and the sweep unresumable. A resume must leave the record untouched.
    from pathlib import Path

    from orchestrator.launch import resume_sweep, sweep_paths

    record = Path(sweep_paths(str(tmp_path), "failing").sweep_file)
    before = (record.stat().st_mtime_ns, record.read_bytes())
    assert resume_sweep("failing", str(tmp_path), verbose=0) == 1  # the CUDA trial fails again
    assert (record.stat().st_mtime_ns, record.read_bytes()) == before

    # A sweep launched by an older psplab kept its record at the top level: it still resumes,
    # and the record moves out of Tune's reach.
    legacy = tmp_path / "failing" / "psplab-sweep.json"
    record.rename(legacy)
    assert resume_sweep("failing", str(tmp_path), verbose=0) == 1
    assert record.read_bytes() == before[1]
