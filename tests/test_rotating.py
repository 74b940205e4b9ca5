"""Rotating MNIST (PSP §4.1.3): the stream, the loop on it under each context schedule, the spec."""
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from trainables.config import TrialConfig
from trainables.data import load_mnist5k
from trainables.loop import train
from trainables.streams import RotatingStream, build_stream

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(stream="rotating", psp="complex", units=16, tasks=2, steps_per_task=30, eval_every=15,
            threads=1, test_examples=200)


@pytest.fixture(scope="module")
def mnist():
    return load_mnist5k()


@pytest.fixture(scope="module")
def stream(mnist):
    return RotatingStream(mnist)


def test_a_full_period_later_the_batch_is_bitwise_the_same(stream):
    x, y = stream.train_set(0)
    index = torch.arange(16)
    for step in (1, 137, 250, 999):
        first, labels = stream.batch(x, y, index, step)
        again, _ = stream.batch(x, y, index, step + 1000)
        later, _ = stream.batch(x, y, index, step + 7000)
        assert torch.equal(first, again) and torch.equal(first, later)
        assert torch.equal(labels, y[index]) and first.shape == (16, 784)
    assert not torch.equal(stream.batch(x, y, index, 1)[0], stream.batch(x, y, index, 2)[0])


def test_quarter_turns_are_counter_clockwise_rot90(stream):
    images = stream.train_x[:32]  # (32, 1, 28, 28)
    assert stream.angle(250) == pytest.approx(torch.pi / 2)
    # torch.rot90 with k=1 over (H, W) turns an image counter-clockwise as displayed
    for step, k in ((250, 1), (500, 2), (750, 3), (1000, 0), (1250, 1)):
        expected = torch.rot90(images, k, dims=(-2, -1))
        assert torch.allclose(stream.rotate(images, step), expected, atol=1e-5), step
    # and a small step turns it a little: close to the image, but not equal
    small = stream.rotate(images, 1)
    assert 0 < (small - images).abs().mean() < 0.02


def test_the_top_row_moves_to_the_left_column(stream):
    """A bright bar along the top rows ends up along the left columns after 90° (CCW)."""
    image = torch.zeros(1, 1, 28, 28)
    image[..., 2:5, 6:22] = 1.0
    turned = stream.rotate(image, 250)[0, 0]
    assert turned[6:22, 2:5].min() > 0.99 and turned[:, 23:].abs().max() < 1e-5


def test_test_sets_are_at_zero_degrees_for_every_task(mnist, stream):
    x0, y0 = stream.test_set(0)
    x5, y5 = stream.test_set(5)
    standardized = (mnist.test_x.flatten(1) - 0.1307) / 0.3081  # the reference's MNIST scaling
    torch.testing.assert_close(x0, standardized, rtol=0, atol=1e-6)
    assert torch.equal(x0, x5) and torch.equal(y0, y5)
    unit = RotatingStream(mnist, input_norm="unit")
    assert torch.equal(unit.test_set(3)[0], mnist.test_x.flatten(1))
    capped = build_stream(TrialConfig(**TINY), mnist)
    assert len(capped.test_set(0)[1]) == 200 and capped.in_features == 784


def test_batches_are_rotated_in_pixel_space_then_scaled(stream):
    # At 45° the corners of a 28×28 image sample outside it: black pixels (0 in [0, 1]), which
    # standardize to −0.1307/0.3081. Scaling before rotating would leave them at 0.
    x, y = stream.train_set(0)
    batch, _ = stream.batch(x, y, torch.arange(8), 125)  # 125/1000 of a turn: 45°
    corners = batch.view(8, 28, 28)[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    torch.testing.assert_close(corners, torch.full_like(corners, -0.1307 / 0.3081), rtol=0, atol=1e-5)


def test_rotating_needs_an_image_dataset_of_mnist_size():
    with pytest.raises(ValidationError, match="rotating"):
        TrialConfig(stream="rotating", dataset="cifar")


@pytest.mark.parametrize("schedule", ["task", "cycle", "fast", "local_mix"])
def test_rotating_mnist_runs_end_to_end_under_each_schedule(schedule):
    cfg = TrialConfig(**TINY, context_schedule=schedule, context_every=10, n_contexts=4)
    rows = []
    summary = train(cfg, lambda task, r: rows.extend(r))
    assert summary.status == "completed" and summary.steps_done == 60
    used = [r["context"] for r in rows if r["split"] == "train"]
    # cycle and local_mix: key (step // 10) mod 4, step 1-based; fast: step mod 4
    every_10 = [0] * 9 + [1] * 10 + [2] * 10 + [3] * 10 + [0] * 10 + [1] * 10 + [2]
    expected = {"task": [0] * 30 + [1] * 30,
                "cycle": every_10,
                "fast": [1, 2, 3, 0] * 15,
                "local_mix": every_10}[schedule]
    assert used == expected
    tests = [r for r in rows if r["split"] == "test"]
    assert {(r["step"], r["eval_task"]) for r in tests} == {(15, 0), (30, 0), (45, 0), (45, 1),
                                                            (60, 0), (60, 1)}
    assert all(0 <= r["accuracy"] <= 1 and r["n_examples"] == 200 for r in tests)


@pytest.mark.parametrize("schedule", ["cycle", "local_mix"])
def test_rotating_stream_same_seed_same_records(schedule):
    cfg = TrialConfig(**TINY, context_schedule=schedule, context_every=10, seed=5)
    first, second = [], []
    train(cfg, lambda task, r: first.extend(r))
    train(cfg, lambda task, r: second.extend(r))
    assert first == second
    other = []
    train(cfg.model_copy(update={"seed": 6}), lambda task, r: other.extend(r))
    assert other != first


def test_resuming_a_rotating_local_mix_trial_reproduces_the_straight_run():
    cfg = TrialConfig(**{**TINY, "tasks": 3}, context_schedule="local_mix", n_contexts=50)
    straight, states, resumed = [], {}, []
    train(cfg, lambda t, r: straight.append((t, r)))
    train(cfg.model_copy(update={"tasks": 2}), lambda t, r: None,
          on_task_end=lambda task, state: states.__setitem__(task, state))
    train(cfg, lambda t, r: resumed.append((t, r)), resume=states[1])
    assert resumed == [chunk for chunk in straight if chunk[0] == 2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_rotation_on_the_gpu_matches_the_cpu(mnist):
    cpu = RotatingStream(mnist)
    gpu = RotatingStream(mnist.to("cuda"))
    index = torch.arange(64)
    for step in (1, 250, 333):
        a, _ = cpu.batch(cpu.train_x, cpu.train_y, index, step)
        b, _ = gpu.batch(gpu.train_x, gpu.train_y, index.cuda(), step)
        assert torch.allclose(a, b.cpu(), atol=1e-5)
        assert torch.equal(b, gpu.batch(gpu.train_x, gpu.train_y, index.cuda(), step + 1000)[0])


def test_rotating_spec_is_figure_5_right_in_the_reference_settings():
    from orchestrator.spec import load_spec

    spec = load_spec(ROOT / "sweeps" / "rotating_mnist.yaml")
    trials = [TrialConfig(**t) for t in spec.trials()]
    # pspComplex, pspLocalMix (100 steps), pspFast, pspFastLocalMix (every step), per dataset
    assert sorted((t.dataset, t.context_schedule, t.context_every) for t in trials) == sorted(
        (d, s, e) for d in ("mnist", "fashion_mnist") for s in ("cycle", "local_mix")
        for e in (100, 1))
    assert all(t.stream == "rotating" and t.psp == "complex" and t.units == 256 and t.depth == 3
               and t.lr == 1e-4 and t.optimizer == "rmsprop" and t.batch_size == 128
               and t.tasks * t.steps_per_task == 50_000 and t.n_contexts == 1000
               and not t.learn_context for t in trials)
    smoke = [TrialConfig(**t) for t in spec.trials(smoke=True)]
    assert len(smoke) == 4 and all(t.dataset == "mnist5k" for t in smoke)


def test_psp_types_spec_is_figure_5_left():
    from orchestrator.spec import load_spec

    spec = load_spec(ROOT / "sweeps" / "rotating_psp_types.yaml")
    trials = [TrialConfig(**t) for t in spec.trials()]
    assert sorted(t.psp for t in trials) == ["binary", "complex", "none", "onepower", "rotation"]
    assert all(t.stream == "rotating" and t.dataset == "fashion_mnist"
               and t.context_schedule == "cycle" and t.context_every == 100
               and t.n_contexts == 10 and t.units == 256 and t.depth == 3 and t.lr == 1e-4
               and t.tasks * t.steps_per_task == 50_000 for t in trials)
    assert len(spec.trials(smoke=True)) == 5


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_rotating_spec_smoke_launches(tmp_path, ray_local, exactly_once):
    """The spec at smoke size through orchestrator.launch on the embedded 2-CPU Ray; its GPU
    resources are swapped for one CPU (an embedded Ray has no GPU and would refuse it)."""
    from orchestrator.launch import launch
    from orchestrator.spec import Resources, load_spec

    spec = load_spec(ROOT / "sweeps" / "rotating_mnist.yaml")
    spec = spec.model_copy(update={"resources": Resources(cpu=1, gpu=0)})
    assert launch(spec, storage=str(tmp_path), smoke=True, verbose=0) == 0
    steps, trials = exactly_once(tmp_path / "rotating_mnist" / "results", n_trials=4)
    assert (trials.status == "completed").all()
    assert set(zip(trials.context_schedule, trials.context_every)) == {
        ("cycle", 100), ("cycle", 1), ("local_mix", 100), ("local_mix", 1)}
    train_rows = steps[steps.split == "train"]
    fast = train_rows[(train_rows.context_schedule == "cycle") & (train_rows.context_every == 1)]
    assert sorted(fast.context) == list(range(1, 101))  # a new context every step (steps 1-100)
    slow = train_rows[(train_rows.context_schedule == "local_mix") & (train_rows.context_every == 100)]
    assert set(slow.context) == {0, 1}  # 100-step contexts: steps 1-99 key 0, step 100 key 1
