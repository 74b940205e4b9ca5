"""`psp plots`: every figure written as PNG (of the fixed size) and SVG, with an index."""
import warnings
from pathlib import Path

import numpy as np
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
