"""The README's pandas queries (analysis/README_queries.md, verbatim) and `psp plots` on a store
written by real training: tiny permuted-mnist5k trials through `trainables.loop.train`."""
import datetime as dt
import re
import warnings
from pathlib import Path

import pytest
from matplotlib import image

from analysis import plots
from orchestrator.cli import main
from orchestrator.store import Store
from trainables import schema
from trainables.config import TrialConfig

QUERIES = Path(__file__).resolve().parent.parent / "analysis" / "README_queries.md"
TINY = dict(units=32, tasks=3, steps_per_task=50, eval_every=25, dataset="mnist5k", threads=1)


def run_into(store: Store, trial_id: str, cfg: TrialConfig) -> str:
    """One trial the way the sweep trainable stores it: a chunk per task, published when it
    ends, then its trials row."""
    from trainables.loop import train

    params = cfg.identity()
    started = dt.datetime.now(dt.timezone.utc)
    summary = train(cfg, lambda task, rows: store.write_chunk(trial_id, task, schema.steps_table(
        rows, params, sweep="tiny", trial_id=trial_id, attempt=0)))
    store.publish(trial_id)
    store.write_trial({"sweep": "tiny", "trial_id": trial_id, "attempt": 0,
                       **schema.param_row(cfg.model_dump()), "status": summary.status,
                       "steps_done": summary.steps_done, "restarts": 0, "start_time": started,
                       "end_time": dt.datetime.now(dt.timezone.utc), "device": summary.device})
    return summary.status


@pytest.fixture(scope="module")
def real_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("storage") / "tiny" / "results"
    store = Store(str(root))
    store.initialise()
    assert run_into(store, "tiny-binary", TrialConfig(psp="binary", **TINY)) == "completed"
    assert run_into(store, "tiny-none", TrialConfig(psp="none", **TINY)) == "completed"
    diverging = TrialConfig(psp="none", optimizer="sgd", lr=1e12, **TINY)
    assert run_into(store, "tiny-diverged", diverging) == "diverged"
    return root


def readme_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", QUERIES.read_text(), flags=re.S)


def test_the_readme_queries_run_against_a_real_store(real_store):
    setup, *queries = readme_blocks()
    assert len(queries) == 3 and 'store = "results/sweeps/demo"' in setup
    namespace: dict = {}
    exec(setup, namespace)
    namespace["store"] = str(real_store.parent)  # the sweep directory, as in the README
    for code in queries:
        exec(code, namespace)

    curve = namespace["curve"]  # 1. task-0 retention curve of the binary trial
    assert list(curve.columns) == ["step", "accuracy"]
    assert curve.step.tolist() == [25, 50, 75, 100, 125, 150]
    assert curve.accuracy.between(0, 1).all() and curve.accuracy.iloc[1] > 0.3  # learned task 0

    final = namespace["final"]  # 2. final accuracy by psp × units
    assert set(final.index) == {"none", "binary"} and list(final.columns) == [32]
    assert final.notna().all().all()

    diverged = namespace["diverged"]  # 3. every diverged trial
    assert diverged.trial_id.tolist() == ["tiny-diverged"]
    assert diverged.steps_done.iloc[0] < 150 and diverged.lr.iloc[0] == 1e12


def test_psp_plots_on_a_real_store(real_store, tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert main(["plots", str(real_store), "--out", str(tmp_path), "--n-boot", "20"]) == 0
    for name, _, _ in plots.FIGURES:
        assert image.imread(tmp_path / f"{name}.png").shape[:2] == (600, 1000), name
        assert (tmp_path / f"{name}.svg").stat().st_size > 0
    index = (tmp_path / "index.md").read_text()
    assert "sweep: tiny" in index and "could not draw" not in index
    assert main(["results", str(real_store)]) == 0
    out = capsys.readouterr().out
    assert "tiny-binary" in out and "diverged" in out


README = QUERIES.parent.parent / "README.md"


def test_the_readme_carries_the_tested_queries_verbatim():
    assert QUERIES.read_text().strip() in README.read_text()


def test_the_readme_capacity_snippet_runs_against_a_real_store(real_store):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    [snippet] = [b for b in blocks if "capacity_table" in b]
    namespace: dict = {}
    exec(snippet.replace('"results/sweeps/demo"', repr(str(real_store.parent))), namespace)
    cap = namespace["cap"]
    measured = cap[cap.status != "insufficient"]
    assert set(measured.psp) == {"binary", "none"} and (measured.K_star > 0).all(), cap
    # The trial that diverged at once (lr 1e12) is its own group, counted, not dropped.
    [lost] = cap[cap.lr == 1e12].itertuples()
    assert lost.n_diverged == 1 and "diverged before any" in lost.note, cap
    summary = namespace["summary"]
    assert summary.loc[summary.trial_id == "tiny-diverged", "status"].tolist() == ["diverged"]
    assert {"tiny-binary", "tiny-none"} <= set(namespace["summary"].trial_id)
