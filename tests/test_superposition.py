"""Superposition math: contexts, binding, layers — against the paper's equations."""
import math

import pytest
import torch
import torch.nn as nn

from trainables.contexts import (CONTEXT_FUNCTIONS, bind, binary_context, complex_context,
                                 identity_context, onepower_context, rotation_context)
from trainables.layers import SuperposedConv2d, SuperposedLinear


def test_contexts_are_deterministic_and_distinct():
    for psp, fn in CONTEXT_FUNCTIONS.items():
        a, b = fn(7, 1, 3, 64), fn(7, 1, 3, 64)
        assert torch.equal(a, b), psp
        if psp != "none":
            assert not torch.equal(fn(7, 1, 3, 64), fn(7, 1, 4, 64)), psp  # another task
            assert not torch.equal(fn(7, 1, 3, 64), fn(7, 2, 3, 64)), psp  # another layer
            assert not torch.equal(fn(7, 1, 3, 64), fn(8, 1, 3, 64)), psp  # another seed


def test_binary_and_complex_contexts_lie_on_the_unit_circle():
    c = binary_context(0, 0, 0, 1000)
    assert set(c.unique().tolist()) == {-1.0, 1.0}
    z = complex_context(0, 0, 0, 1000)
    torch.testing.assert_close(z.abs(), torch.ones(1000))
    phases = z.angle()
    assert phases.min() < -3.0 and phases.max() > 3.0  # uniform over [-π, π]


def test_onepower_contexts_are_powers_of_one_context():
    c1 = onepower_context(3, 0, 1, 256)          # k = 1
    c3 = onepower_context(3, 0, 3, 256)          # k = 3
    torch.testing.assert_close(c3, c1 ** 3, atol=1e-5, rtol=0)
    assert not torch.allclose(c1, torch.ones(256, dtype=c1.dtype))


def test_onepower_gives_task_zero_the_identity_context():
    # The reference code's one-power key is time·φ with time from 0: task 0 is unbound.
    torch.testing.assert_close(onepower_context(3, 0, 0, 256), torch.ones(256, dtype=torch.complex64))


@pytest.mark.parametrize("dim", [2, 17, 256])
def test_rotation_contexts_are_orthogonal(dim):
    c = rotation_context(5, 0, 1, dim)
    torch.testing.assert_close(c @ c.T, torch.eye(dim), atol=1e-5, rtol=0)
    torch.testing.assert_close(c.T @ c, torch.eye(dim), atol=1e-5, rtol=0)


def test_rotation_contexts_are_haar_not_qr_biased():
    # Without the sign fix, QR's Q has a biased diagonal; under Haar measure E[C_11] = 0.
    diagonal = torch.stack([rotation_context(0, 0, k, 3)[0, 0] for k in range(2000)])
    assert abs(diagonal.mean().item()) < 0.05


def _ones_linear(psp, n_in, n_out, bias):
    layer = SuperposedLinear(n_in, n_out, psp=psp, seed=0, layer=0, bias=bias, learn_context=True)
    with torch.no_grad():
        if layer.contexts.learned.dim() == 3:  # complex keys as (re, im)
            layer.contexts.learned.zero_()
            layer.contexts.learned[..., 0] = 1
        else:
            layer.contexts.learned.fill_(1)
    return layer


@pytest.mark.parametrize("psp", ["binary", "complex"])
@pytest.mark.parametrize("bias", [True, False])
def test_superposed_linear_with_all_ones_context_equals_nn_linear(psp, bias):
    layer = _ones_linear(psp, 20, 7, bias)
    plain = nn.Linear(20, 7, bias=bias)
    with torch.no_grad():
        plain.weight.copy_(layer.weight)
        if bias:
            layer.bias.normal_()
            plain.bias.copy_(layer.bias)
        if layer.weight_imag is not None:
            layer.weight_imag.zero_()
    x = torch.randn(5, 20)
    out = layer(x, 0)
    torch.testing.assert_close(out.real if out.is_complex() else out, plain(x))


def test_standard_network_layer_equals_nn_linear():
    layer = SuperposedLinear(12, 4, psp="none", seed=0, layer=0)
    plain = nn.Linear(12, 4)
    with torch.no_grad():
        plain.weight.copy_(layer.weight)
        plain.bias.copy_(layer.bias)
    x = torch.randn(3, 12)
    torch.testing.assert_close(layer(x, 0), plain(x))
    torch.testing.assert_close(layer(x, 5), plain(x))  # no context: every task is the same model


@pytest.mark.parametrize("bias", [True, False])
def test_superposed_conv_with_all_ones_context_equals_nn_conv2d(bias):
    conv = SuperposedConv2d(3, 8, 3, psp="binary", seed=0, layer=0, padding=1, bias=bias,
                            learn_context=True)
    plain = nn.Conv2d(3, 8, 3, padding=1, bias=bias)
    with torch.no_grad():
        conv.contexts.learned.fill_(1)
        plain.weight.copy_(conv.weight)
        if bias:
            conv.bias.normal_()
            plain.bias.copy_(conv.bias)
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(conv(x, 0), plain(x))


@pytest.mark.parametrize("psp", ["binary", "complex", "onepower", "rotation"])
def test_one_by_one_superposed_conv_equals_superposed_linear(psp):
    """A 1×1 conv is the linear layer applied at every pixel, context included (eq. 8 vs eq. 4)."""
    linear = SuperposedLinear(6, 5, psp=psp, seed=11, layer=2, bias=False)
    conv = SuperposedConv2d(6, 5, 1, psp=psp, seed=11, layer=2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(linear.weight.view(5, 6, 1, 1))
        if linear.weight_imag is not None:
            conv.weight_imag.copy_(linear.weight_imag.view(5, 6, 1, 1))
    x = torch.randn(4, 6, 3, 3)
    for task in (0, 3):
        via_conv = conv(x, task)  # (B, 5, 3, 3)
        pixels = x.permute(0, 2, 3, 1).reshape(-1, 6)  # (B·H·W, 6)
        via_linear = linear(pixels, task).reshape(4, 3, 3, 5).permute(0, 3, 1, 2)
        torch.testing.assert_close(via_conv, via_linear, atol=1e-5, rtol=1e-5)


def _retrieval_noise_power(context_fn, n_models: int, dim: int, trials: int, models: str) -> float:
    """E|ε|² when K unit-norm models w_i are stored as W = Σ_i w_i ⊙ c̄_i and model 0 is read
    out with y = <W, c_0 ⊙ x> for x = w_0: y = 1 + ε, ε = Σ_{i≠0} <w_i ⊙ c̄_i ⊙ c_0, w_0>.

    models: 'independent' (a random vector of entries ±1/√M each) or 'identical' (one such
    vector for every model: tasks that want the same weights, which only the contexts keep
    apart). The trials' contexts are rows of one context of dim·trials entries, i.i.d. like
    any others."""
    g = torch.Generator().manual_seed(n_models * 1000 + dim)

    def signs() -> torch.Tensor:  # (T, M) of ±1
        return torch.randint(0, 2, (trials, dim), generator=g).to(torch.complex128) * 2 - 1

    shared = signs() / dim**0.5
    stored = torch.zeros(trials, dim, dtype=torch.complex128)             # (T, M): W per trial
    for i in range(n_models):
        w = shared if models == "identical" else signs() / dim**0.5       # (T, M)
        c = context_fn(0, 0, i, dim * trials).view(trials, dim).to(torch.complex128)
        stored += w * c.conj()
        if i == 0:
            w0, c0 = w, c
    readout = torch.stack([(stored[t] * bind(w0[t:t + 1], c0[t])).sum() for t in range(trials)])
    return float((readout - 1).abs().pow(2).mean())


@pytest.mark.parametrize("models", ["independent", "identical"])
@pytest.mark.parametrize("context_fn", [binary_context, complex_context, onepower_context],
                         ids=["binary", "complex", "onepower"])
def test_retrieval_noise_grows_like_sqrt_k_over_m(context_fn, models):
    """Appendix A: each interfering model adds noise of variance 1/M, so std(ε) ≈ sqrt((K−1)/M),
    whether or not the models resemble each other."""
    for n_models, dim in [(5, 256), (17, 256), (17, 1024), (65, 512)]:
        power = _retrieval_noise_power(context_fn, n_models, dim, trials=300, models=models)
        predicted = (n_models - 1) / dim
        assert power == pytest.approx(predicted, rel=0.2), (n_models, dim, power, predicted)


def test_without_contexts_identical_models_interfere_fully():
    """The control, c = 1 (the standard network): unrelated models add the same 1/M each as
    with contexts, but K identical ones sum up, y = K: ε = K − 1, not sqrt((K−1)/M)."""
    for n_models, dim in [(5, 256), (17, 1024)]:
        unrelated = _retrieval_noise_power(identity_context, n_models, dim, 300, "independent")
        assert unrelated == pytest.approx((n_models - 1) / dim, rel=0.2)
        alike = _retrieval_noise_power(identity_context, n_models, dim, 300, "identical")
        assert alike == pytest.approx((n_models - 1) ** 2, rel=1e-9)


@pytest.mark.parametrize("context_fn", [binary_context, complex_context, onepower_context],
                         ids=["binary", "complex", "onepower"])
def test_retrieval_noise_of_superposition_is_far_below_no_context(context_fn):
    """Contexts decorrelate the stored models; without them, similar models interfere fully."""
    dim, n_models = 512, 9
    g = torch.Generator().manual_seed(0)
    base = torch.randn(dim, generator=g, dtype=torch.float64)
    w = base + 0.1 * torch.randn(n_models, dim, generator=g, dtype=torch.float64)  # similar models
    w = w / w.norm(dim=1, keepdim=True)
    for fn, expect_small in ((context_fn, True), (identity_context, False)):
        c = torch.stack([fn(0, 0, i, dim) for i in range(n_models)]).to(torch.complex128)
        readout = ((w * c.conj()).sum(0) * bind(w[0].to(torch.complex128), c[0])).sum()
        error = abs(readout - 1)
        if expect_small:
            assert error < 4 * math.sqrt((n_models - 1) / dim)
        else:
            assert error > 5  # ≈ K − 1 = 8: the readout sums every stored model


@pytest.mark.parametrize("psp", ["binary", "complex"])
def test_mlp_flattens_images_itself(psp):
    from trainables.models import SuperposedMLP

    net = SuperposedMLP(3 * 4 * 4, 8, 2, 5, psp=psp, seed=0)
    images = torch.randn(6, 3, 4, 4)  # (B, C, H, W)
    torch.testing.assert_close(net(images, 1), net(images.reshape(6, -1), 1), rtol=0, atol=0)


def test_standard_network_is_initialised_as_the_reference_nn_linear():
    # The reference baseline is torch.nn.Linear with its default init: same draws, same values.
    torch.manual_seed(11)
    reference = torch.nn.Linear(784, 64)
    torch.manual_seed(11)
    layer = SuperposedLinear(784, 64, psp="none", seed=0, layer=0)
    assert torch.equal(layer.weight, reference.weight) and torch.equal(layer.bias, reference.bias)
    # superposed real layers keep Xavier-normal weights and no bias: std √(2/(in+out)) ≈ 0.049
    binary = SuperposedLinear(784, 64, psp="binary", seed=0, layer=0, bias=False)
    assert binary.bias is None and abs(binary.weight.std().item() - (2 / 848) ** 0.5) < 0.003
