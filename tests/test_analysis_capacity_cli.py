"""`psp capacity backtest` and `psp capacity report` on a small store: a table, figures, a
report whose numbers come from the store, and one-line errors with exit code 2."""
from pathlib import Path

import pytest
from matplotlib import image

from analysis import figure_kit
from orchestrator.cli import main
from test_analysis_query import make_store

TASKS = 8


@pytest.fixture(scope="module")
def store_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("storage") / "small" / "results"
    make_store(root, psps=("none", "binary"), widths=(64,), seeds=(0, 1, 2), tasks=TASKS,
               steps_per_task=40, eval_every=20, diverge=("binary", 64, 2), train_rows=False,
               sweep="small")
    return root


def test_backtest_prints_a_table_and_writes_figures(store_root, tmp_path, capsys):
    out = tmp_path / "bt"
    assert main(["capacity", "backtest", str(store_root.parent), "--fit-tasks", "4",
                 "--n-boot", "20", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert lines[0].startswith("backtest: each group fitted on the measurements taken while its "
                               "first 4 tasks trained")
    header = lines[1]
    assert "task 0 at the end: measured" in header and "coverage" in header
    assert f"after {TASKS}" in lines[2]
    assert any(line.lstrip().startswith("psp=none, units=64") for line in lines[2:4])
    assert "90% prediction interval" in printed and "over all groups:" in printed
    diverged = next(line for line in lines if line.lstrip().startswith("psp=binary"))
    assert diverged.split()[2] == "3" and diverged.split()[3] == "1"   # 3 seeds, 1 diverged
    for name in ("backtest_task0.png", "backtest_scatter.png"):
        assert image.imread(out / name).shape[:2] == (figure_kit.PNG_SIZE[1],
                                                      figure_kit.PNG_SIZE[0])
    assert (out / "backtest.csv").read_text().count("\n") == 3   # header + 2 groups


def test_where_selects_the_scored_seeds(store_root, capsys):
    assert main(["capacity", "backtest", str(store_root), "--fit-tasks", "4", "--n-boot", "20",
                 "--where", "seed <= 1"]) == 0
    assert "no interval (2 seeds)" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--fit-tasks", str(TASKS)], f"--fit-tasks {TASKS}: the store's trials ran at most {TASKS}"),
    (["--fit-tasks", "1"], "--fit-tasks 1: need at least 2 tasks"),
    (["--level", "1.5"], "--level 1.5"),
    (["--where", "colour == 1"], "--where 'colour == 1'"),
    (["--where", "seed > 9"], "no trials match 'seed > 9'"),
])
def test_bad_input_is_one_line_exit_2(store_root, capsys, args, message):
    assert main(["capacity", "backtest", str(store_root), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_store_too_short_for_the_split(tmp_path, capsys):
    root = tmp_path / "short"
    make_store(root, psps=("binary",), widths=(64,), seeds=(0,), tasks=3, steps_per_task=40,
               eval_every=0, train_rows=False)
    assert main(["capacity", "backtest", str(root), "--fit-tasks", "2"]) == 2
    err = capsys.readouterr().err
    assert "no group could be backtested from its first 2 tasks" in err
    assert len(err.strip().splitlines()) == 1


def test_backtest_numbers_are_what_the_command_regenerates(store_root, capsys):
    args = ["capacity", "backtest", str(store_root), "--fit-tasks", "4", "--n-boot", "20"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first


def test_report_writes_markdown_from_the_store(store_root, tmp_path):
    out = tmp_path / "study"
    assert main(["capacity", "report", str(store_root), "--out", str(out), "--fit-tasks", "4",
                 "--n-boot", "10"]) == 0
    text = (out / "README.md").read_text()
    assert text.startswith("# Capacity study: small")
    assert f"psp capacity report {store_root} --out {out} --fit-tasks 4" in text
    for section in ("## Capacity per width and type", "## Capacity vs width", "## Backtest",
                    "### held-out seeds", "### all seeds", "## The paper's claims"):
        assert section in text
    assert "| Figure 2: the standard network forgets task 0" in text
    assert "not tested at this scale" in text   # no 2048-unit trials here
    for png in ("task0_by_width", "capacity_scaling", "backtest_task0", "paper_table"):
        assert (out / f"{png}.png").stat().st_size > 5000


def test_psp_capacity_help_through_the_entry_point(psp):
    done = psp("capacity", "backtest", "--help", timeout=60)
    assert done.returncode == 0 and "--fit-tasks" in done.stdout
    bad = psp("capacity", "backtest", str(Path("/no/such/store")), timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "/no/such/store" in bad.stderr
