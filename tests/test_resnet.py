"""Superposed ResNet-18 (PSP §3 conv superposition, §4.2 iCIFAR) and the multihead baseline."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from trainables.config import TrialConfig
from trainables.layers import SuperposedConv2d
from trainables.models import build_model
from trainables.resnet import MultiHeadNet, SuperposedResNet18, image_shape

WIDTH = 4  # narrow: 4-8-16-32 channels


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convolutions: with other processes on the 2 cores, 2-thread OpenMP is far slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class PlainBlock(nn.Module):
    """A textbook BasicBlock from nn.Conv2d, written independently as the reference."""

    def __init__(self, n_in, n_out, stride):
        super().__init__()
        self.c1 = nn.Conv2d(n_in, n_out, 3, stride, 1, bias=False)
        self.c2 = nn.Conv2d(n_out, n_out, 3, 1, 1, bias=False)
        self.sc = nn.Conv2d(n_in, n_out, 1, stride, 0, bias=False) if stride != 1 or n_in != n_out else None
        self.bn = lambda h: F.batch_norm(h, None, None, training=True)

    def forward(self, x):
        h = self.bn(self.c2(F.relu(self.bn(self.c1(x)))))
        return F.relu(h + (x if self.sc is None else self.bn(self.sc(x))))


class PlainResNet18(nn.Module):
    def __init__(self, width, classes):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        blocks, n_in = [], width
        for stage, stride in enumerate((1, 2, 2, 2)):
            n_out = width * 2**stage
            blocks += [PlainBlock(n_in, n_out, stride), PlainBlock(n_out, n_out, 1)]
            n_in = n_out
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(n_in, classes)

    def forward(self, x):
        h = F.relu(F.batch_norm(self.stem(x), None, None, training=True))
        for block in self.blocks:
            h = block(h)
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def _copy_into_plain(model: SuperposedResNet18, plain: PlainResNet18, bias: bool) -> None:
    trunk = model.trunk
    pairs = [(trunk.stem, plain.stem)]
    for sup, ref in zip(trunk.blocks, plain.blocks):
        pairs += [(sup.conv1, ref.c1), (sup.conv2, ref.c2)]
        assert (sup.shortcut is None) == (ref.sc is None)
        if sup.shortcut is not None:
            pairs.append((sup.shortcut, ref.sc))
    with torch.no_grad():
        for sup, ref in pairs:
            ref.weight.copy_(sup.weight)
        plain.fc.weight.copy_(model.head.weight)
        if bias:
            plain.fc.bias.copy_(model.head.bias)
        else:
            plain.fc.bias.zero_()


def _cfg(**kw):
    base = dict(model="resnet18", units=WIDTH, tasks=3, dataset="cifar", stream="incremental",
                steps_per_task=10, eval_every=0)
    return TrialConfig(**{**base, **kw})


def test_every_conv_but_the_stem_is_superposed_with_its_own_layer_index():
    """The reference's HashResNet leaves the stem a plain nn.Conv2d shared by all tasks."""
    model = build_model(_cfg(psp="binary"), (3, 32, 32), n_contexts=3)
    convs = [m for m in model.modules() if isinstance(m, SuperposedConv2d)]
    assert len(convs) == 19  # 8 blocks × 2 + 3 shortcuts (1×1)
    assert sum(c.kernel_shape[1] == 1 for c in convs) == 3
    layers = [c.contexts.layer for c in convs] + [model.head.contexts.layer]
    assert sorted(layers) == list(range(1, 21))  # index 0 stays the stem's
    stem = model.trunk.stem
    assert type(stem) is nn.Conv2d and stem.bias is None
    assert (stem.in_channels, stem.out_channels, stem.kernel_size, stem.padding) == (3, WIDTH, (3, 3), (1, 1))
    # nn.Conv2d's own initialisation: U(±1/sqrt(fan_in)), fan_in = 3·3·3
    assert stem.weight.abs().max() <= 27 ** -0.5 and stem.weight.std() > 0.5 * 27 ** -0.5 / 3 ** 0.5
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not bn.affine and not bn.track_running_stats for bn in bns)


def test_superpose_stem_binds_the_stem_too_and_leaves_the_other_contexts_alone():
    plain = build_model(_cfg(psp="binary"), (3, 32, 32), n_contexts=3)
    model = build_model(_cfg(psp="binary", superpose_stem=True), (3, 32, 32), n_contexts=3)
    convs = [m for m in model.modules() if isinstance(m, SuperposedConv2d)]
    assert len(convs) == 20 and model.trunk.stem.contexts.layer == 0
    assert not [m for m in model.modules() if type(m) is nn.Conv2d]
    x = torch.randn(2, 3, 32, 32)
    assert not torch.equal(model.trunk.stem(x, 0), model.trunk.stem(x, 1))  # a stem per task
    pairs = list(zip([m for m in plain.modules() if isinstance(m, SuperposedConv2d)],
                     [m for m in convs if m is not model.trunk.stem]))
    assert len(pairs) == 19
    for a, b in pairs:
        assert a.contexts.layer == b.contexts.layer
        assert torch.equal(a.contexts(2), b.contexts(2))


def test_psp_none_equals_a_plain_resnet18():
    torch.manual_seed(0)
    model = build_model(_cfg(psp="none"), 3 * 32 * 32, n_contexts=3)
    plain = PlainResNet18(WIDTH, 10)
    _copy_into_plain(model, plain, bias=True)
    x = torch.randn(6, 3, 32, 32)
    torch.testing.assert_close(model(x, 0), plain(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(x.flatten(1), 2), plain(x), atol=1e-5, rtol=1e-5)  # flat input


def test_binary_with_all_ones_contexts_equals_a_plain_resnet18():
    model = build_model(_cfg(psp="binary", learn_context=True), (3, 32, 32), n_contexts=3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("contexts.learned"):
                p.fill_(1.0)
    plain = PlainResNet18(WIDTH, 10)
    _copy_into_plain(model, plain, bias=False)
    x = torch.randn(5, 3, 32, 32)
    torch.testing.assert_close(model(x, 1), plain(x), atol=1e-5, rtol=1e-5)


def test_binary_contexts_give_each_task_a_different_network():
    model = build_model(_cfg(psp="binary"), (3, 32, 32), n_contexts=3)
    x = torch.randn(4, 3, 32, 32)
    assert not torch.allclose(model(x, 0), model(x, 1), atol=1e-3)
    torch.testing.assert_close(model(x, 1), model(x, 1))


@pytest.mark.parametrize("psp", ["complex", "onepower", "rotation"])
def test_other_superpositions_run_and_train(psp):
    model = build_model(_cfg(psp=psp, units=2), (3, 16, 16), n_contexts=2)
    logits = model(torch.randn(3, 3, 16, 16), 1)
    assert logits.shape == (3, 10) and not logits.is_complex()
    logits.sum().backward()
    assert model.trunk.stem.weight.grad is not None


def test_multihead_routes_by_task_and_trains_only_that_head():
    model = build_model(_cfg(psp="none", heads="multi", output_units=10), (3, 32, 32), n_contexts=3)
    assert isinstance(model, MultiHeadNet) and len(model.heads.heads) == 3
    x = torch.randn(4, 3, 32, 32)
    outputs = [model(x, k) for k in range(3)]
    assert not torch.allclose(outputs[0], outputs[1]) and not torch.allclose(outputs[1], outputs[2])
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x, 1), torch.tensor([0, 1, 2, 3])).backward()
    heads = model.heads.heads
    assert heads[1].weight.grad is not None and heads[1].weight.grad.abs().sum() > 0
    assert heads[0].weight.grad is None and heads[2].weight.grad is None
    assert model.trunk.stem.weight.grad is not None  # the trunk is shared
    # task 1 is a function of head 1's parameters only
    with torch.no_grad():
        heads[0].weight.add_(1.0)
        heads[2].bias.add_(1.0)
    torch.testing.assert_close(model(x, 1), outputs[1])
    with pytest.raises(IndexError):
        model(x, 3)


def test_multihead_mlp_shares_the_hidden_layers():
    cfg = TrialConfig(model="mlp", heads="multi", units=16, depth=2, tasks=2, psp="binary")
    model = build_model(cfg, 784, n_contexts=2)
    single = build_model(cfg.model_copy(update={"heads": "single"}), 784, n_contexts=2)
    x = torch.randn(3, 784)
    assert model(x, 0).shape == (3, 10)
    # same seed, same trunk: the hidden layers of single- and multi-head MLPs coincide
    for a, b in zip(model.trunk.layers, single.layers[:-1]):
        torch.testing.assert_close(a.weight, b.weight)
    assert model.heads.heads[0].contexts.layer == single.layers[-1].contexts.layer == 2


def test_image_shape():
    assert image_shape(3072) == (3, 32, 32)
    assert image_shape(784) == (1, 28, 28)
    assert image_shape((3, 8, 8)) == (3, 8, 8)
    with pytest.raises(ValueError):
        image_shape(1000)
