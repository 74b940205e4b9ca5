"""The incremental CIFAR stream (PSP §4.2) on tiny fake CIFAR-format datasets (never downloaded)."""
import itertools
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainables import data, loop
from trainables.config import TrialConfig
from trainables.data import Dataset
from trainables.incremental import (MAX_TASKS, IncrementalCifarStream, augment_batch,
                                    build_incremental_stream, cifar100_classes)
from trainables.streams import build_stream


def fake_cifar(name: str, classes: int, per_class_train: int, per_class_test: int,
               side: int = 8, seed: int = 0) -> Dataset:
    """Random images in [0, 1], (N, 3, side, side), labels cycling through 0..classes−1."""
    g = torch.Generator().manual_seed(seed)
    n_train, n_test = classes * per_class_train, classes * per_class_test
    return Dataset(name,
                   torch.rand(n_train, 3, side, side, generator=g),
                   torch.arange(n_train) % classes,
                   torch.rand(n_test, 3, side, side, generator=g),
                   torch.arange(n_test) % classes)


@pytest.fixture(scope="module")
def cifar10():
    return fake_cifar("cifar", 10, 3, 2, seed=1)


@pytest.fixture(scope="module")
def cifar100():
    return fake_cifar("cifar100", 100, 2, 1, seed=2)


def _raw(stream, x):
    return x * stream.std + stream.mean  # undo the normalisation


def test_task_0_is_cifar10_and_later_tasks_disjoint_cifar100_classes(cifar10, cifar100):
    stream = IncrementalCifarStream(cifar10, cifar100, seed=0)
    x0, y0 = stream.train_set(0)
    torch.testing.assert_close(_raw(stream, x0), cifar10.train_x)
    assert torch.equal(y0, cifar10.train_y)
    seen = set()
    for task in range(1, 5):
        classes = cifar100_classes(task)
        assert list(classes) == list(range(10 * (task - 1), 10 * task))
        seen.update(classes)
        for split, (xs, ys) in {"train": stream.train_set(task), "test": stream.test_set(task)}.items():
            source_x = getattr(cifar100, f"{split}_x")
            source_y = getattr(cifar100, f"{split}_y")
            keep = (source_y >= classes.start) & (source_y < classes.stop)
            assert xs.shape[1:] == (3, 8, 8)  # images, not flattened
            assert set(ys.tolist()) == set(range(10))  # relabelled 0..9
            assert torch.equal(ys, source_y[keep] - classes.start)
            torch.testing.assert_close(_raw(stream, xs), source_x[keep])
    assert len(seen) == 40  # four disjoint sets of ten classes
    with pytest.raises(IndexError):
        stream.train_set(MAX_TASKS)


def test_normalised_with_cifar10_training_statistics(cifar10, cifar100):
    stream = IncrementalCifarStream(cifar10, cifar100, seed=0)
    x0, _ = stream.train_set(0)
    torch.testing.assert_close(x0.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(x0.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-5, rtol=0)
    assert stream.in_features == 3 * 8 * 8 and stream.image_shape == (3, 8, 8)


def test_test_examples_cap_and_cache(cifar10, cifar100):
    stream = IncrementalCifarStream(cifar10, cifar100, seed=0, test_examples=4)
    x, y = stream.test_set(0)
    assert len(y) == 4 and len(stream.test_set(2)[1]) == 4
    assert stream.test_set(0)[0] is x  # prepared once


def test_augmentation_is_a_crop_of_the_padded_image_maybe_flipped():
    x = torch.rand(6, 3, 5, 5)
    out = augment_batch(x, torch.Generator().manual_seed(3), pad=2)
    assert out.shape == x.shape
    padded = F.pad(x, (2, 2, 2, 2))
    flips = 0
    for b in range(6):
        candidates = [(padded[b, :, oy:oy + 5, ox:ox + 5], flip)
                      for oy, ox in itertools.product(range(5), range(5)) for flip in (False, True)]
        matches = [flip for crop, flip in candidates
                   if torch.equal(out[b], crop.flip(2) if flip else crop)]
        assert matches, f"example {b} is no crop of its padded image"
        flips += matches[0]
    assert 0 < flips < 6  # with p = 1/2 over 6 examples (fixed seed)


def test_batches_are_deterministic_per_step(cifar10, cifar100):
    stream = IncrementalCifarStream(cifar10, cifar100, seed=5)
    x, y = stream.train_set(1)
    index = torch.tensor([0, 3, 5, 7])
    a, ya = stream.batch(x, y, index, step=12)
    b, _ = stream.batch(x, y, index, step=12)
    c, _ = stream.batch(x, y, index, step=13)
    assert torch.equal(a, b) and not torch.equal(a, c) and torch.equal(ya, y[index])
    plain = IncrementalCifarStream(cifar10, cifar100, seed=5, augment=False)
    assert torch.equal(plain.batch(x, y, index, 12)[0], x[index])


def test_build_stream_checks_the_config(cifar10, cifar100):
    cfg = TrialConfig(stream="incremental", dataset="cifar", tasks=5, model="resnet18")
    assert isinstance(build_incremental_stream(cfg, cifar10, cifar100=cifar100), IncrementalCifarStream)
    with pytest.raises(ValueError, match="at most 11 tasks"):
        build_incremental_stream(cfg.model_copy(update={"tasks": 12}), cifar10, cifar100=cifar100)
    with pytest.raises(ValueError, match="needs dataset 'cifar'"):
        build_incremental_stream(cfg.model_copy(update={"dataset": "mnist5k"}), cifar10,
                                 cifar100=cifar100)


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    """A data directory of tiny CIFAR-10 and CIFAR-100 files in the official pickle format:
    CIFAR-10 10 training images per batch file (5 files) and 20 test images; CIFAR-100 two
    training and one test image per class (fine labels)."""
    root = tmp_path_factory.mktemp("cifar")
    rng = np.random.default_rng(0)

    def write(path, n, key, classes):
        path.parent.mkdir(parents=True, exist_ok=True)
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 key: [i % classes for i in range(n)]}
        with open(path, "wb") as handle:
            pickle.dump(batch, handle)

    for i in range(1, 6):
        write(root / "cifar-10-batches-py" / f"data_batch_{i}", 10, b"labels", 10)
    write(root / "cifar-10-batches-py" / "test_batch", 20, b"labels", 10)
    write(root / "cifar-100-python" / "train", 200, b"fine_labels", 100)
    write(root / "cifar-100-python" / "test", 100, b"fine_labels", 100)
    return root


@pytest.mark.parametrize("psp,heads", [("binary", "single"), ("none", "multi")])
def test_training_loop_runs_resnet18_on_icifar_files(cifar_dir, psp, heads):
    """End to end through the loop and the data loaders, on fake CIFAR files."""
    cfg = TrialConfig(model="resnet18", units=2, psp=psp, heads=heads, stream="incremental",
                      dataset="cifar", tasks=3, steps_per_task=4, batch_size=8, eval_every=2,
                      lr=1e-3, device="cpu", threads=1, data_dir=str(cifar_dir))
    rows = []
    summary = loop.train(cfg, sink=lambda task, r: rows.extend(r))
    assert summary.status == "completed" and summary.steps_done == 12
    final = {r["eval_task"]: r["n_examples"] for r in rows
             if r["split"] == "test" and r["step"] == 12}
    assert final == {0: 20, 1: 10, 2: 10}  # CIFAR-10's test set, then ten CIFAR-100 classes each
    stream = build_stream(cfg, data.load_dataset("cifar", str(cifar_dir)))
    assert isinstance(stream, IncrementalCifarStream) and stream.image_shape == (3, 32, 32)


# ---- the sweep spec -------------------------------------------------------------------------
def test_icifar_spec_is_the_paper_setup_and_its_smoke_runs_without_cifar():
    """The full grid needs CIFAR files and a GPU; its smoke swaps in permuted mnist5k and a
    2-channel ResNet, so every model of the grid trains here, through the real loop."""
    from pathlib import Path

    from orchestrator.spec import load_spec

    spec = load_spec(Path(__file__).parents[1] / "sweeps" / "icifar.yaml")
    trials = [TrialConfig(**t) for t in spec.trials()]
    assert {(t.psp, t.heads) for t in trials} == {("none", "single"), ("binary", "single"),
                                                  ("none", "multi"), ("binary", "multi")}
    assert all(t.model == "resnet18" and t.units == 64 and t.stream == "incremental"
               and t.dataset == "cifar" and t.tasks == 5 and t.steps_per_task == 20_000
               and t.lr == 1e-3 and t.optimizer == "rmsprop" for t in trials)
    assert spec.resources.gpu >= 1
    for smoke in spec.trials(smoke=True):
        cfg = TrialConfig(**{**smoke, "device": "cpu", "threads": 1})
        assert cfg.dataset == "mnist5k"
        summary = loop.train(cfg, sink=lambda task, rows: None)
        assert summary.status == "completed" and summary.steps_done == cfg.total_steps
