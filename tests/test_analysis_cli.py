"""`psp results` and `psp plots` on the command line: tables, filters, one-line errors."""
import pandas as pd
import pytest

from orchestrator.cli import main
from test_analysis_query import make_store


@pytest.fixture(scope="module")
def store_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("storage") / "synth" / "results"
    make_store(root, widths=(64, 256), seeds=(0,), tasks=3, diverge=("none", 256, 0),
               train_rows=False)
    return root


def test_results_prints_one_row_per_trial(store_root, capsys):
    assert main(["results", str(store_root.parent)]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header == ["trial_id", "psp", "units", "tasks", "seed", "status", "acc", "steps_done"]
    assert "6 trial(s)" in out and "diverged" in out
    diverged_line = next(line for line in out.splitlines() if "diverged" in line)
    assert "—" in diverged_line  # no final accuracy: not measured, not 0


def test_results_where_and_csv(store_root, tmp_path, capsys):
    csv = tmp_path / "t.csv"
    assert main(["results", str(store_root), "--where", "psp == 'binary' and units > 100",
                 "--csv", str(csv)]) == 0
    assert "1 trial(s)" in capsys.readouterr().out
    table = pd.read_csv(csv)
    assert table.trial_id.tolist() == ["synth-binary-256-s0"] and 0.5 < table.acc.iloc[0] <= 1
    assert main(["results", str(store_root), "--where", "status == 'diverged'"]) == 0
    assert "synth-none-256-s0" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["results", "/no/such/store"], "/no/such/store: no such file or directory"),
    (["results", "{store}", "--where", "psp ==="], "--where 'psp ===': SyntaxError"),
    (["results", "{store}", "--where", "colour == 1"], "colour"),
    (["plots", "/no/such/store", "--out", "{tmp}"], "no such file or directory"),
    (["plots", "{store}", "--out", "{tmp}", "--threshold", "1.5"], "--threshold 1.5"),
])
def test_errors_are_one_line_exit_2(store_root, tmp_path, capsys, args, message):
    args = [a.format(store=store_root, tmp=tmp_path / "figs") for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_results_through_the_psp_entry_point(store_root, psp):
    ok = psp("results", str(store_root), timeout=120)
    assert ok.returncode == 0 and "synth-complex-64-s0" in ok.stdout, ok.stderr
    bad = psp("results", str(store_root / "nope"), timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "nope" in bad.stderr


def test_results_capacity_puts_k_hat_beside_k_star(store_root, capsys):
    assert main(["results", str(store_root), "--capacity", "--n-boot", "10"]) == 0
    out = capsys.readouterr().out
    table = out.split("capacity at θ = 90%")[1].splitlines()
    assert "K* (model)" in table[1] and "K̂ (data)" in table[1] and "agreement" in table[1]
    rows = [line for line in table[2:] if line.strip()]
    assert len(rows) == 6   # psp × units: one seed each
    assert all("no interval (1 seed)" in line or "insufficient" in line for line in rows), rows
