"""The incremental CIFAR stream (PSP §4.2) on tiny fake CIFAR-format datasets (never downloaded)."""
import itertools
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from trainables import data, loop
from trainables.config import TrialConfig
from trainables.data import Dataset
from trainables.incremental import (IncrementalCifarStream, augment_batch,
                                    build_incremental_stream, cifar100_classes, max_tasks)
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


def incremental_cfg(**kw):
    return TrialConfig(**{"model": "resnet18", "stream": "incremental", "dataset": "cifar",
                          "tasks": 5, **kw})


@pytest.mark.parametrize("first_class, expected", [
    (10, [range(10, 20), range(20, 30), range(30, 40), range(40, 50)]),  # the reference's
    (0, [range(0, 10), range(10, 20), range(20, 30), range(30, 40)]),
])
def test_task_0_is_cifar10_and_later_tasks_ten_cifar100_classes_each(cifar10, cifar100,
                                                                     first_class, expected):
    stream = IncrementalCifarStream(cifar10, cifar100, seed=0, first_class=first_class)
    x0, y0 = stream.train_set(0)
    assert torch.equal(x0, cifar10.train_x) and torch.equal(y0, cifar10.train_y)
    for task, classes in enumerate(expected, start=1):
        assert cifar100_classes(task, first_class) == classes
        x, y = stream.train_set(task)
        keep = torch.tensor([label in classes for label in cifar100.train_y.tolist()])
        assert x.shape[1:] == (3, 8, 8)  # images, not flattened
        assert torch.equal(x, cifar100.train_x[keep])  # [0, 1]: batch() scales them
        assert torch.equal(y, cifar100.train_y[keep] - classes.start)
        assert set(y.tolist()) == set(range(10))  # relabelled 0..9
        xt, yt = stream.test_set(task)
        keep = torch.tensor([label in classes for label in cifar100.test_y.tolist()])
        assert torch.equal(yt, cifar100.test_y[keep] - classes.start)
        torch.testing.assert_close(xt, cifar100.test_x[keep] * 2 - 1)
    last = max_tasks(first_class)
    assert last == (10 if first_class == 10 else 11)  # CIFAR-10 + 9 or 10 splits of CIFAR-100
    assert cifar100_classes(last - 1, first_class).stop == 100
    with pytest.raises(IndexError):
        stream.train_set(last)


def test_inputs_are_scaled_as_input_norm_says_symmetric_by_default(cifar10, cifar100):
    """The reference scales CIFAR to [−1, 1]; standardize uses CIFAR-10's channel statistics."""
    stream = build_incremental_stream(incremental_cfg(), cifar10, cifar100=cifar100)
    assert incremental_cfg().input_norm == "symmetric"
    x, y = stream.train_set(2)
    index = torch.tensor([0, 3, 5])
    batch, labels = stream.batch(x, y, index, step=7)
    torch.testing.assert_close(batch, x[index] * 2 - 1, rtol=0, atol=0)  # no augmentation
    assert torch.equal(labels, y[index])
    torch.testing.assert_close(stream.test_set(0)[0], cifar10.test_x * 2 - 1, rtol=0, atol=0)

    standard = build_incremental_stream(incremental_cfg(input_norm="standardize"), cifar10,
                                        cifar100=cifar100)
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    sd = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    torch.testing.assert_close(standard.test_set(1)[0][:1],
                               (cifar100.test_x[10:11] - mean) / sd)  # test image 10: class 10
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


def test_augmented_batches_pad_black_then_scale_and_are_deterministic_per_step(cifar10, cifar100):
    stream = build_incremental_stream(incremental_cfg(augment=True, seed=5), cifar10,
                                      cifar100=cifar100)
    x, y = stream.train_set(1)
    index = torch.tensor([0, 3, 5, 7])
    a, ya = stream.batch(x, y, index, step=12)
    b, _ = stream.batch(x, y, index, step=12)
    c, _ = stream.batch(x, y, index, step=13)
    assert torch.equal(a, b) and not torch.equal(a, c) and torch.equal(ya, y[index])
    # crops of the black-padded image, then scaled to [−1, 1]: padding comes out as −1
    padded = F.pad(x[index], (4, 4, 4, 4)) * 2 - 1
    for k in range(4):
        assert any(torch.equal(a[k], crop) or torch.equal(a[k], crop.flip(2))
                   for crop in (padded[k, :, i:i + 8, j:j + 8]
                                for i, j in itertools.product(range(9), range(9))))
    assert (a == -1).any()  # some crop reached into the padding (fixed seed)


def test_incremental_options_are_checked_naming_the_field():
    assert incremental_cfg().augment is False and incremental_cfg().superpose_stem is False
    assert incremental_cfg().cifar100_first_class == 10
    incremental_cfg(tasks=10)  # CIFAR-10 + classes 10-99
    incremental_cfg(tasks=11, cifar100_first_class=0)
    with pytest.raises(ValidationError, match="tasks: .* at most 10 tasks"):
        incremental_cfg(tasks=11)
    with pytest.raises(ValidationError, match="cifar100_first_class"):
        incremental_cfg(cifar100_first_class=95)
    with pytest.raises(ValidationError, match="augment"):
        TrialConfig(augment=True)  # the permuted stream
    with pytest.raises(ValidationError, match="superpose_stem"):
        TrialConfig(superpose_stem=True)  # the MLP


def test_build_stream_checks_the_config(cifar10, cifar100):
    cfg = incremental_cfg()
    assert isinstance(build_incremental_stream(cfg, cifar10, cifar100=cifar100), IncrementalCifarStream)
    with pytest.raises(ValueError, match="at most 10 tasks"):
        build_incremental_stream(cfg.model_copy(update={"tasks": 11}), cifar10, cifar100=cifar100)
    with pytest.raises(ValueError, match="needs dataset 'cifar'"):
        build_incremental_stream(cfg.model_copy(update={"dataset": "mnist5k"}), cifar10,
                                 cifar100=cifar100)


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    """A data directory of tiny CIFAR-10 and CIFAR-100 files in the official pickle format:
    CIFAR-10 10 training images per batch file (5 files) and 20 test images; CIFAR-100 two
    training images per class and one test image per class, two for classes 0-9 (fine labels)."""
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
    write(root / "cifar-100-python" / "test", 110, b"fine_labels", 100)  # 0-9 twice, 10-99 once
    return root


@pytest.mark.parametrize("psp,heads,first_class,per_task", [("binary", "single", 10, 10),
                                                             ("none", "multi", 0, 20)])
def test_training_loop_runs_resnet18_on_icifar_files(cifar_dir, psp, heads, first_class, per_task):
    """End to end through the loop and the data loaders, on fake CIFAR files."""
    cfg = TrialConfig(model="resnet18", units=2, psp=psp, heads=heads, stream="incremental",
                      dataset="cifar", tasks=3, steps_per_task=4, batch_size=8, eval_every=2,
                      lr=1e-3, device="cpu", threads=1, data_dir=str(cifar_dir),
                      cifar100_first_class=first_class)
    rows = []
    summary = loop.train(cfg, sink=lambda task, r: rows.extend(r))
    assert summary.status == "completed" and summary.steps_done == 12
    final = {r["eval_task"]: r["n_examples"] for r in rows
             if r["split"] == "test" and r["step"] == 12}
    # CIFAR-10's test set, then ten CIFAR-100 classes each: from class 10 one test image per
    # class, from class 0 two (the fake test file holds classes 0-9 twice)
    assert final == {0: 20, 1: per_task, 2: 10}
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
    # the reference's protocol: CIFAR-100 from class 10, no augmentation, [−1, 1], plain stem
    assert all(t.cifar100_first_class == 10 and not t.augment and t.input_norm == "symmetric"
               and not t.superpose_stem and t.batch_size == 128 for t in trials)
    assert spec.resources.gpu >= 1
    for smoke in spec.trials(smoke=True):
        cfg = TrialConfig(**{**smoke, "device": "cpu", "threads": 1})
        assert cfg.dataset == "mnist5k"
        summary = loop.train(cfg, sink=lambda task, rows: None)
        assert summary.status == "completed" and summary.steps_done == cfg.total_steps
