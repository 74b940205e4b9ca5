"""Superposed layers: one weight tensor, many models, retrieved by a context per call.

Linear (PSP eq. 4/7): y = W (c_k ⊙ x) + b, or W (C_k x) + b for rotations.
Conv (PSP eq. 8): y_n = (w_n ⊙ c_k) * x, the context c_k of shape (in_ch, kh, kw) shared by all
output channels n — cheaper than binding the much larger input image.

A bias is not superposed — it is shared by every task — so the paper's equations have none and
the networks use one only for the standard (psp='none') baseline. That baseline is initialised
as the reference code's ``nn.Linear`` (W, b ~ U(±1/√fan_in)); superposed real layers use
Xavier-normal weights, as the reference's superposed layers do.

Complex superposition (complex, onepower) uses complex weights W = W_re + i W_im, initialised
with a Xavier-normal magnitude and uniform phase as the reference code does, stored as two real
parameters so that RMSprop normalises each component (as the reference's real pairs do).
Activations are then complex tensors; the network takes the real part of its logits.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainables.contexts import bind, is_complex, make_context

_CACHE_BYTES = 64 << 20  # per layer; rotation contexts of wide layers are large


class ContextBank(nn.Module):
    """The contexts of one layer, by index. Fixed contexts are regenerated on demand from
    (seed, layer, index) and cached; learned contexts are parameters initialised the same way.
    """

    def __init__(self, psp: str, seed: int, layer: int, dim: int, *, learn: bool = False,
                 n_contexts: int = 1):
        super().__init__()
        self.psp, self.seed, self.layer, self.dim = psp, seed, layer, dim
        self.learned: nn.Parameter | None = None
        if learn:
            if psp not in ("binary", "complex"):
                raise ValueError(f"learn_context is supported for binary and complex, not {psp!r}")
            initial = torch.stack([make_context(psp, seed, layer, i, dim) for i in range(n_contexts)])
            # complex keys are learned as (re, im) pairs, like the weights
            self.learned = nn.Parameter(torch.view_as_real(initial).clone() if initial.is_complex()
                                        else initial)
        self._cache: dict[int, torch.Tensor] = {}
        self.make = make_context  # (psp, seed, layer, index, dim) -> context; see use_function
        # Moves with .to(device), so regenerated contexts land where the weights are.
        self.register_buffer("_anchor", torch.empty(0), persistent=False)

    def use_function(self, make) -> None:
        """Generate this layer's fixed contexts with ``make(psp, seed, layer, index, dim)``
        instead of make_context (the local_mix context schedule mixes neighbouring phases)."""
        if self.learned is not None:
            raise ValueError("learned contexts are parameters; they are not regenerated")
        self.make = make
        self._cache.clear()

    def forward(self, index: int) -> torch.Tensor:
        if self.learned is not None:
            key = self.learned[index]
            return torch.view_as_complex(key) if key.dim() == 2 else key
        cached = self._cache.get(index)
        device = self._anchor.device
        if cached is None or cached.device != device:
            cached = self.make(self.psp, self.seed, self.layer, index, self.dim).to(device)
            if cached.numel() * cached.element_size() * (len(self._cache) + 1) > _CACHE_BYTES:
                self._cache.clear()
            self._cache[index] = cached
        return cached


def use_context_function(model: nn.Module, make) -> None:
    """Every ContextBank of ``model`` generates its contexts with ``make`` (see use_function)."""
    for module in model.modules():
        if isinstance(module, ContextBank):
            module.use_function(make)


def _linear_default_init(in_features: int, out_features: int,
                         bias: bool) -> tuple[nn.Parameter, nn.Parameter | None]:
    """torch.nn.Linear's default: W, b ~ U(−1/√in, 1/√in) (kaiming_uniform with a = √5 gives
    exactly that bound), drawn in nn.Linear's order — weight, then bias."""
    bound = 1.0 / math.sqrt(in_features)
    weight = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound, bound))
    return weight, (nn.Parameter(torch.empty(out_features).uniform_(-bound, bound)) if bias else None)


def _complex_init(out_features: int, fan_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    magnitude = nn.init.xavier_normal_(torch.empty(out_features, *fan_shape))
    phase = torch.empty_like(magnitude).uniform_(-math.pi, math.pi)
    return magnitude * torch.cos(phase), magnitude * torch.sin(phase)


class SuperposedLinear(nn.Module):
    """y = W (c_k ⊙ x) + b (diagonal contexts) or W (C_k x) + b (rotation). x: (B, in)."""

    def __init__(self, in_features: int, out_features: int, *, psp: str, seed: int, layer: int,
                 bias: bool = True, learn_context: bool = False, n_contexts: int = 1):
        super().__init__()
        self.in_features, self.out_features, self.psp = in_features, out_features, psp
        self.contexts = ContextBank(psp, seed, layer, in_features, learn=learn_context,
                                    n_contexts=n_contexts)
        self.weight_imag = None
        if psp == "none":
            # The standard network is the reference baseline's nn.Linear, default init and all.
            self.weight, self.bias = _linear_default_init(in_features, out_features, bias)
            return
        if is_complex(psp):
            real, imag = _complex_init(out_features, (in_features,))
            self.weight = nn.Parameter(real)
            self.weight_imag = nn.Parameter(imag)
        else:
            self.weight = nn.Parameter(nn.init.xavier_normal_(torch.empty(out_features, in_features)))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def effective_weight(self) -> torch.Tensor:
        if self.weight_imag is None:
            return self.weight
        return torch.complex(self.weight, self.weight_imag)

    def forward(self, x: torch.Tensor, context: int) -> torch.Tensor:
        c = self.contexts(context)
        bound = bind(x, c)  # (B, in)
        weight = self.effective_weight()
        if weight.is_complex() and not bound.is_complex():
            bound = bound.to(weight.dtype)
        out = F.linear(bound, weight)  # (B, out)
        return out if self.bias is None else out + self.bias  # bias on the real part


class SuperposedConv2d(nn.Module):
    """y_n = (w_n ⊙ c_k) * x + b_n, c_k ∈ shape (in_ch, kh, kw) shared over output channels n.

    A rotation context C_k acts on the flattened kernel window: w_eff = w_flat C_k, which is
    exactly W (C_k patch) for every input patch — the linear layer's rule applied per patch.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, psp: str,
                 seed: int, layer: int, stride: int = 1, padding: int = 0, bias: bool = True,
                 learn_context: bool = False, n_contexts: int = 1):
        super().__init__()
        self.in_channels, self.out_channels, self.psp = in_channels, out_channels, psp
        self.kernel_shape = (in_channels, kernel_size, kernel_size)
        self.stride, self.padding = stride, padding
        fan = in_channels * kernel_size * kernel_size
        self.contexts = ContextBank(psp, seed, layer, fan, learn=learn_context, n_contexts=n_contexts)
        if is_complex(psp):
            real, imag = _complex_init(out_channels, self.kernel_shape)
            self.weight = nn.Parameter(real)
            self.weight_imag = nn.Parameter(imag)
        else:
            weight = torch.empty(out_channels, *self.kernel_shape)
            self.weight = nn.Parameter(nn.init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu"))
            self.weight_imag = None
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def contextual_kernel(self, context: int) -> torch.Tensor:
        c = self.contexts(context)
        weight = self.weight if self.weight_imag is None else torch.complex(self.weight, self.weight_imag)
        flat = weight.reshape(self.out_channels, -1)  # (out, in*kh*kw)
        if c.dim() == 2:
            kernel = flat @ c  # rows w_n C_k
        else:
            kernel = flat * c  # w_n ⊙ c_k
        return kernel.reshape(self.out_channels, *self.kernel_shape)

    def forward(self, x: torch.Tensor, context: int) -> torch.Tensor:
        kernel = self.contextual_kernel(context)
        conv = lambda inp, w: F.conv2d(inp, w, stride=self.stride, padding=self.padding)  # noqa: E731
        if kernel.is_complex():
            # conv2d has no complex kernels on every backend: expand (a+ib)*(c+id) by hand
            xr, xi = (x.real, x.imag) if x.is_complex() else (x, None)
            real = conv(xr, kernel.real) - (conv(xi, kernel.imag) if xi is not None else 0)
            imag = conv(xr, kernel.imag) + (conv(xi, kernel.real) if xi is not None else 0)
            out = torch.complex(real, imag)
        else:
            out = conv(x, kernel)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        return out  # (B, out, H', W')
