"""`psp plots`: every figure written as PNG (of the fixed size) and SVG, with an index."""
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib import image

from analysis import plots
from orchestrator.cli import main
from test_analysis_query import make_store

FIGURES = [name for name, _, _ in plots.FIGURES]
DEMO = Path(__file__).resolve().parent.parent / "results" / "sweeps" / "demo" / "results"


def check_figures(out: Path) -> None:
    for name in FIGURES:
        png, svg = out / f"{name}.png", out / f"{name}.svg"
        assert png.stat().st_size > 5000, name
        text = svg.read_text()
        assert text.lstrip().startswith("<?xml") and "<svg" in text and "sweep: " in text, name
        pixels = image.imread(png)
        assert pixels.shape[:2] == (plots.PNG_SIZE[1], plots.PNG_SIZE[0]), (name, pixels.shape)
        assert np.ptp(pixels[..., :3]) > 0.5, f"{name} is blank"  # something was drawn
    index = (out / "index.md").read_text()
    html = (out / "index.html").read_text()
    for name in FIGURES:
        assert f"({name}.png)" in index and f'src="{name}.png"' in html
    assert "could not draw" not in index


@pytest.fixture(scope="module")
def demo_like(tmp_path_factory):
    """The demo grid (standard/binary/complex × 2 widths) plus a third width, 2 seeds, a
    diverged trial."""
    root = tmp_path_factory.mktemp("store") / "demo" / "results"
    make_store(root, widths=(64, 128, 256), seeds=(0, 1), tasks=6, sweep="demo",
               diverge=("none", 128, 1), train_rows=False)
    return root


def test_psp_plots_writes_every_figure_labelled(demo_like, tmp_path, capsys):
    out = tmp_path / "figures"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a figure that failed to draw warns
        assert main(["plots", str(demo_like.parent), "--out", str(out), "--threshold", "0.85",
                     "--n-boot", "20"]) == 0
    printed = capsys.readouterr().out
    assert f"index: {out / 'index.md'}" in printed
    check_figures(out)
    index = (out / "index.md").read_text()
    assert "sweep: demo · seeds: 2 · threshold: 85% of just-trained accuracy" in index
    svg = (out / "capacity_scaling.svg").read_text()
    assert "sweep: demo" in svg and "seeds: 2" in svg and "threshold: 85%" in svg
    for table in ("capacity.csv", "capacity.parquet", "scaling.csv", "summary.csv",
                  "paper_table.csv"):
        assert (out / table).stat().st_size > 0
    paper = (out / "paper_table.csv").read_text()
    assert "97.6" in paper and "61.8" in paper


def test_figures_of_a_thin_store_say_not_enough_data(tmp_path):
    root = tmp_path / "thin"
    make_store(root, psps=("binary",), widths=(64,), seeds=(0,), tasks=2, eval_every=0,
               train_rows=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        written = plots.write_all(root, tmp_path / "out", n_boot=10)
    assert {p.name for p in written} >= {f"{n}.png" for n in FIGURES}
    check_figures(tmp_path / "out")
    assert "insufficient" in (tmp_path / "out" / "capacity.csv").read_text()


def test_an_empty_store_still_gets_every_figure(tmp_path):
    from orchestrator.store import Store

    Store(str(tmp_path / "empty")).initialise()
    plots.write_all(tmp_path / "empty", tmp_path / "out", n_boot=10)
    for name in FIGURES:
        assert image.imread(tmp_path / "out" / f"{name}.png").shape[:2] == (600, 1000)


def test_a_figure_that_fails_is_replaced_not_fatal(demo_like, tmp_path, monkeypatch):
    def broken(data):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(plots, "FIGURES", (("broken", "Broken", broken), *plots.FIGURES[:1]))
    with pytest.warns(RuntimeWarning, match="figure broken: ZeroDivisionError: boom"):
        plots.write_all(demo_like, tmp_path, n_boot=10)
    assert image.imread(tmp_path / "broken.png").shape[:2] == (600, 1000)
    assert "could not draw: ZeroDivisionError: boom" in (tmp_path / "index.md").read_text()


@pytest.mark.skipif(not DEMO.is_dir(), reason="no demo store: run `make demo`")
def test_psp_plots_on_the_demo_store(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert main(["plots", str(DEMO), "--out", str(tmp_path), "--n-boot", "20"]) == 0
    check_figures(tmp_path)


# ---- what the figures say (hand-built frames, no store) ---------------------------------------
def bare(tests: pd.DataFrame, summary: pd.DataFrame | None = None, by=("psp", "units")):
    """An Analysis of hand-built test rows: no capacity fits (the figures below need none)."""
    from analysis.figure_kit import Analysis

    return Analysis(tests, summary if summary is not None else pd.DataFrame(), pd.DataFrame(),
                    pd.DataFrame(), pd.DataFrame(), 0.9, 0.1, "hand", pd.DataFrame(), list(by))


def icifar_rows(tasks=3, spt=10) -> pd.DataFrame:
    """psp none/binary × heads single/multi on the incremental stream, 2 seeds; task j's
    accuracy after the last task is 0.8 − 0.1·j for binary, chance-like for the standard net."""
    rows = []
    for psp in ("none", "binary"):
        for heads in ("single", "multi"):
            for seed in (0, 1):
                for i in range(tasks):
                    for j in range(i + 1):
                        level = 0.8 - 0.1 * j if psp == "binary" else 0.8 - 0.25 * (i - j)
                        rows.append({"trial_id": f"{psp}-{heads}-{seed}", "psp": psp,
                                     "heads": heads, "units": 64, "seed": seed, "tasks": tasks,
                                     "steps_per_task": spt, "stream": "incremental",
                                     "step": (i + 1) * spt, "split": "test", "eval_task": j,
                                     "accuracy": level + 0.01 * seed})
    return pd.DataFrame(rows)


def texts(fig) -> str:
    from matplotlib.text import Text

    return " ".join(t.get_text() for t in fig.findobj(Text))


def test_icifar_figure_superposed_vs_multihead():
    from analysis import plots_paper

    fig = plots_paper.fig_icifar(bare(icifar_rows(), by=("psp", "units", "heads")))
    left, right = fig.axes
    labels = {t.get_text() for t in left.get_legend().get_texts()}
    assert labels == {"standard", "multihead", "pspBinary", "pspBinary + multihead"}
    from matplotlib.container import BarContainer

    bars = {c.get_label(): [round(p.get_height(), 1) for p in c]
            for c in right.containers if isinstance(c, BarContainer)}
    # After the last task (mean of seeds 0 and 1, +0.5): binary 80 − 10·j, the standard net
    # 80 − 25·(2 − j); a bar per configuration and task.
    assert bars["pspBinary"] == bars["pspBinary + multihead"] == [80.5, 70.5, 60.5]
    assert bars["standard"] == bars["multihead"] == [30.5, 55.5, 80.5]
    empty = plots_paper.fig_icifar(bare(icifar_rows().assign(stream="permuted")))
    assert "no incremental-CIFAR trials" in texts(empty)


@pytest.mark.parametrize("tasks, dataset, comparable", [(10, "mnist5k", False),
                                                         (50, "mnist5k", False),
                                                         (50, "mnist", True)])
def test_paper_table_says_when_it_is_not_comparable(tasks, dataset, comparable):
    from analysis import plots_paper

    summary = pd.DataFrame({"trial_id": ["a", "b"], "psp": ["binary", "none"], "units": [64, 64],
                            "seed": [0, 0], "tasks": [tasks] * 2, "dataset": [dataset] * 2,
                            "acc_last10": [0.9, 0.6]})
    data = bare(pd.DataFrame(), summary)
    table = plots_paper.paper_table(data)
    assert bool(table["comparable"].iloc[0]) is comparable
    said = texts(plots_paper.fig_paper_table(data))
    assert ("NOT COMPARABLE" in said) is (not comparable)
    if not comparable:
        assert (f"tasks: {tasks} here" in said) is (tasks != 50)


def test_accuracy_matrix_colour_scale_fits_the_data_and_prints_small_ones():
    rows = icifar_rows().query("psp == 'binary' and heads == 'single' and seed == 0")
    fig = plots.fig_accuracy_matrix(bare(rows.assign(stream="permuted")))
    image = fig.axes[0].get_images()[0]
    assert image.get_clim() == pytest.approx((0.6, 0.8))   # R[i, j] = 0.8 − 0.1·j: not 0–1
    printed = sorted(t.get_text() for t in fig.axes[0].texts if t.get_text().isdigit())
    assert printed == ["60", "70", "70", "80", "80", "80"]   # percent, the lower triangle


def test_retention_figure_dashes_the_extrapolation(tmp_path):
    from analysis.figure_kit import analyse

    root = tmp_path / "one"
    make_store(root, psps=("binary",), widths=(64,), seeds=(0, 1), tasks=6, train_rows=False)
    fig = plots.fig_retention_fit(analyse(root, n_boot=0))
    styles = {line.get_linestyle() for ax in fig.axes for line in ax.get_lines()}
    assert {"-", "--", ":"} <= styles
    assert "dashed: extrapolation" in texts(fig)
