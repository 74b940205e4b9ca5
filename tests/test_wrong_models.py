"""Wrong models the rest of the suite would let through, each pinned by values computed here.

- Complex networks read the *real part* of their complex logits (the reference code's
  ``models/contextnet.py`` returns the real half of its last layer): checked through
  ``SuperposedMLP`` and the packed ``PackedMLP`` (eager and the CUDA-graph forward) against a
  few lines of numpy complex arithmetic, and through the first recorded loss of ``train`` and
  ``train_packed``.
- Permuted MNIST gives task t its own pixel permutation (task 0 none), the same for the same
  (seed, task), the same at training and at test time: read off what the network is fed, on
  probe images whose pixel j of image n holds n + j/1024.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainables import loop, packed
from trainables.config import TrialConfig
from trainables.contexts import complex_context, onepower_context
from trainables.data import Dataset, load_dataset
from trainables.loop import batch_indices, train
from trainables.models import SuperposedMLP, build_model
from trainables.packed import PackedMLP, train_packed
from trainables.streams import build_stream

CONTEXT = {"complex": complex_context, "onepower": onepower_context}


# ---- complex logits: the real part, of the last layer ------------------------------------
def reference_logits(weights, contexts, x) -> np.ndarray:
    """PSP's complex network, written out: z_1 = W_1 (c_1 ⊙ x); h = ReLU(Re z) + i ReLU(Im z)
    between layers; the logits are Re z_L. weights: complex (out, in) arrays, contexts: complex
    (in,) arrays, x real (B, in). Returns the complex z_L (B, out); callers take .real."""
    h = x.astype(np.complex128)
    for i, (w, c) in enumerate(zip(weights, contexts)):
        if i > 0:
            h = np.maximum(h.real, 0) + 1j * np.maximum(h.imag, 0)
        h = (h * c) @ w.T
    return h


def set_weights(net: SuperposedMLP, seed: int) -> list[np.ndarray]:
    """Give every layer known complex weights (drawn here); returns them as numpy arrays."""
    rng = np.random.default_rng(seed)
    weights = []
    with torch.no_grad():
        for layer in net.layers:
            shape = (layer.out_features, layer.in_features)
            w = rng.normal(size=shape) + 1j * rng.normal(size=shape)
            layer.weight.copy_(torch.from_numpy(w.real))
            layer.weight_imag.copy_(torch.from_numpy(w.imag))
            weights.append(w)
    return weights


def contexts_of(psp: str, seed: int, net: SuperposedMLP, k: int) -> list[np.ndarray]:
    return [CONTEXT[psp](seed, i, k, layer.in_features).numpy().astype(np.complex128)
            for i, layer in enumerate(net.layers)]


def assert_sensitive(z: np.ndarray, weights, contexts, x) -> None:
    """The planted readings (.imag, .abs(), the real part taken a layer early) are far from
    Re z_L here, so a network that used one cannot pass."""
    early = x.astype(np.complex128)
    for i, (w, c) in enumerate(zip(weights, contexts)):
        early = (np.maximum(early.real, 0) if i > 0 else early) * c @ w.T
    for wrong in (z.imag, np.abs(z), early.real):
        assert np.abs(wrong - z.real).max() > 0.5


@pytest.mark.parametrize("psp, k", [("complex", 0), ("complex", 3), ("onepower", 0),
                                    ("onepower", 2)])
def test_complex_mlp_outputs_the_real_part_of_its_last_layer(psp, k):
    net = SuperposedMLP(5, 4, 2, 3, psp=psp, seed=9)      # 5 → 4 → 4 → 3: three layers
    weights = set_weights(net, seed=1)
    x = np.random.default_rng(2).normal(size=(6, 5))
    contexts = contexts_of(psp, 9, net, k)
    z = reference_logits(weights, contexts, x)
    assert_sensitive(z, weights, contexts, x)
    got = net(torch.from_numpy(x).float(), k)
    assert got.dtype == torch.float32 and got.shape == (6, 3)
    np.testing.assert_allclose(got.detach().numpy(), z.real, rtol=1e-4, atol=1e-4)


def test_packed_complex_members_output_the_real_part_eager_and_graphed_forward():
    """PackedMLP stacks members (complex, onepower, complex) of other seeds: member p's block t
    is computed under its own context contexts[t]. forward_static (the CUDA-graph step) reads
    the contexts from layer.static; on the CPU it computes the same function."""
    members = [SuperposedMLP(5, 4, 1, 3, psp=psp, seed=s)
               for psp, s in (("complex", 0), ("onepower", 1), ("complex", 2))]
    weights = [set_weights(m, seed=10 + p) for p, m in enumerate(members)]
    net = PackedMLP(members, torch.device("cpu"), exact=True)
    x = np.random.default_rng(3).normal(size=(3, 2, 4, 5))          # (P, T, N, in)
    got = net.forward(torch.from_numpy(x).float(), [1, 2]).detach().numpy()  # (P, T, N, 3)
    assert got.shape == (3, 2, 4, 3)
    for p, (m, s) in enumerate(zip(members, (0, 1, 2))):
        for t, k in enumerate((1, 2)):
            contexts = contexts_of(m.layers[0].psp, s, m, k)
            z = reference_logits(weights[p], contexts, x[p, t])
            assert_sensitive(z, weights[p], contexts, x[p, t])
            np.testing.assert_allclose(got[p, t], z.real, rtol=1e-4, atol=1e-4)
    for layer in net.layers:
        layer.static = net.context(layer, 2)                          # (P, in)
    graphed = net.forward_static(torch.from_numpy(x[:, 1]).float()).detach().numpy()
    np.testing.assert_allclose(graphed, got[:, 1], rtol=1e-5, atol=1e-5)


def test_first_recorded_loss_is_cross_entropy_of_the_real_logits_alone_and_packed():
    """Step 1's train row is the loss before any update: cross-entropy of Re z_L of the
    initial network on the first batch, computed here from the initial weights."""
    cfgs = [TrialConfig(psp=psp, seed=s, units=16, tasks=1, steps_per_task=2, eval_every=0,
                        threads=1, test_examples=100)
            for psp, s in (("complex", 4), ("onepower", 5))]
    dataset = load_dataset("mnist5k")
    expected = []
    for cfg in cfgs:
        x, y = build_stream(cfg, dataset).train_set(0)
        first = batch_indices(cfg, 0, len(y), torch.device("cpu"))[0]          # (B,)
        net = build_model(cfg, x.shape[1], n_contexts=1)
        weights = [(l.weight.double() + 1j * l.weight_imag.double()).detach().numpy()
                   for l in net.layers]
        z = reference_logits(weights, contexts_of(cfg.psp, cfg.seed, net, 0), x[first].numpy())
        loss = {name: F.cross_entropy(torch.from_numpy(v), y[first]).item()
                for name, v in (("real", z.real), ("imag", z.imag), ("abs", np.abs(z)))}
        # initial logits are small, so every reading costs about ln 10; they still differ by
        # far more than the tolerance (1e-4 relative) below
        assert min(abs(loss["imag"] - loss["real"]), abs(loss["abs"] - loss["real"])) > 0.01, loss
        expected.append(loss["real"])

    def first_loss(rows):
        return next(r["loss"] for r in rows if r["split"] == "train" and r["step"] == 1)

    for cfg, want in zip(cfgs, expected):
        chunks = []
        train(cfg, lambda task, rows: chunks.extend(rows))
        assert first_loss(chunks) == pytest.approx(want, rel=1e-4)
    chunks = [[], []]
    train_packed(cfgs, [lambda t, r, mine=mine: mine.extend(r) for mine in chunks])
    for rows, want in zip(chunks, expected):
        assert first_loss(rows) == pytest.approx(want, rel=1e-4)


# ---- permuted tasks: task t trains and tests on permutation t ------------------------------
D = 784


def probe_dataset(n_train: int = 48, n_test: int = 16) -> Dataset:
    """Pixel j of image n holds n + j/1024 (exact in float32): any row the network is fed
    names its image (the integer part) and where each of its pixels came from (the fraction)."""
    where = torch.arange(D, dtype=torch.float32).div(1024)                     # (D,)

    def images(n: int) -> torch.Tensor:
        return (torch.arange(n, dtype=torch.float32)[:, None] + where).view(n, 1, 28, 28)

    return Dataset("probe", images(n_train), torch.arange(n_train) % 10, images(n_test),
                   torch.arange(n_test) % 10)


def decode(x: torch.Tensor) -> tuple[list[int], tuple[int, ...]]:
    """Rows x (N, D) fed unscaled (input_norm 'unit') → (image of each row, the pixel order
    common to every row: position i holds source pixel order[i])."""
    image = x.floor()
    source = ((x - image) * 1024).round().long()                             # (N, D)
    assert (source == source[0]).all(), "rows of one forward carry different permutations"
    return image[:, 0].long().tolist(), tuple(source[0].tolist())


IDENTITY = tuple(range(D))


def stream_orders(seed: int, tasks: int) -> dict[int, tuple[int, ...]]:
    """Each task's pixel order, read off a PermutedStream's train and test sets (which must
    agree, keep every image in its row and leave the labels alone)."""
    probe = probe_dataset()
    stream = build_stream(TrialConfig(seed=seed, input_norm="unit"), probe)
    orders = {}
    for task in range(tasks):
        (x, y), (x_test, y_test) = stream.train_set(task), stream.test_set(task)
        images, order = decode(x)
        test_images, test_order = decode(x_test)
        assert images == list(range(len(probe.train_y))) and test_images == list(range(16))
        assert torch.equal(y, probe.train_y) and torch.equal(y_test, probe.test_y)
        assert test_order == order, f"task {task}: trained on one permutation, tested on another"
        assert sorted(order) == list(IDENTITY), f"task {task}: not a permutation of the pixels"
        orders[task] = order
    return orders


def test_each_task_has_its_own_permutation_the_same_for_the_same_seed_and_task():
    first = {seed: stream_orders(seed, tasks=6) for seed in (0, 1)}
    for seed, orders in first.items():
        assert orders[0] == IDENTITY                                   # task 0: the plain image
        assert len(set(orders.values())) == 6, f"seed {seed}: tasks share a permutation"
        assert stream_orders(seed, tasks=6) == orders                  # same (seed, task), same
    assert all(first[0][t] != first[1][t] for t in range(1, 6))        # seeds draw their own
    # on real digits, the standardised pixels of task t are those of task 0, moved
    mnist = load_dataset("mnist5k")
    stream = build_stream(TrialConfig(seed=3, test_examples=50), mnist)
    plain = stream.test_set(0)[0]                                      # (50, D)
    assert torch.equal(plain, ((mnist.test_x[:50] - 0.1307) / 0.3081).flatten(1))
    for task in (1, 2):
        moved = stream.test_set(task)[0]
        assert torch.equal(moved.sort(1).values, plain.sort(1).values)
        assert not torch.equal(moved, plain)


def record_inputs(forward, calls: list):
    """Wrap a forward(x, context(s)) to keep a copy of every input it is given."""
    def recording(self, x, contexts):
        calls.append((getattr(self, "training", True), contexts, x.detach().clone()))
        return forward(self, x, contexts)
    return recording


def test_train_feeds_task_t_permutation_t_in_training_and_in_evaluation(monkeypatch):
    """What the network is fed under context t (= task t) in train(): the probe images in the
    pixel order of task t, for its training steps and its tests alike."""
    monkeypatch.setattr(loop, "load_dataset", lambda name, data_dir=None: probe_dataset())
    calls: list = []
    monkeypatch.setattr(SuperposedMLP, "forward", record_inputs(SuperposedMLP.forward, calls))
    cfg = TrialConfig(psp="binary", seed=2, units=8, tasks=4, steps_per_task=4, eval_every=2,
                      batch_size=8, input_norm="unit", threads=1)
    train(cfg, lambda task, rows: None)
    seen: dict[tuple[bool, int], set] = {}
    for training, context, x in calls:
        seen.setdefault((training, context), set()).add(decode(x)[1])
    assert sorted(seen) == [(mode, t) for mode in (False, True) for t in range(4)]
    expected = stream_orders(2, tasks=4)
    for (training, task), orders in seen.items():
        assert orders == {expected[task]}, ("training" if training else "testing", task)


def test_train_packed_feeds_each_member_its_own_seeds_permutations(monkeypatch):
    monkeypatch.setattr(packed, "load_dataset", lambda name, data_dir=None: probe_dataset())
    calls: list = []
    monkeypatch.setattr(PackedMLP, "forward", record_inputs(PackedMLP.forward, calls))
    seeds = (0, 1, 0)
    cfgs = [TrialConfig(psp="binary", seed=s, units=8, tasks=3, steps_per_task=4, eval_every=2,
                        batch_size=8, input_norm="unit", threads=1) for s in seeds]
    train_packed(cfgs, [lambda task, rows: None] * 3)
    expected = {s: stream_orders(s, tasks=3) for s in set(seeds)}
    blocks = 0
    for _, contexts, x in calls:                                     # x (P, T, N, D)
        for p, seed in enumerate(seeds):
            for t, task in enumerate(contexts):
                assert decode(x[p, t])[1] == expected[seed][task], (p, seed, task)
                blocks += 1
    assert blocks >= 3 * (3 * 4 + 3)          # every step and test of every task, per member
