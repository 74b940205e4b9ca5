"""Context vectors of Parameter Superposition: one pure function per superposition type.

Every context is a deterministic function of (seed, layer, index): nothing is stored as global
state, a resumed trial regenerates exactly the contexts it had, and two runs with the same seed
bind the same keys. ``index`` is the context index (the task under the default schedule).

Conventions: a layer input x has shape (B, M); a diagonal context c has shape (M,) and binds as
c ⊙ x; a rotation context C has shape (M, M) and binds as C x, i.e. ``x @ C.T`` for row batches.
"""
from __future__ import annotations

import math

import numpy as np
import torch

PSP_TYPES = ("none", "binary", "complex", "onepower", "rotation")

# Distinct streams so that e.g. the binary key of layer 0 is unrelated to its rotation.
_STREAM = {"binary": 1, "complex": 2, "onepower": 3, "rotation": 4, "permutation": 5,
           "init": 6, "batches": 7, "mask": 8}


def generator(seed: int, purpose: str, *keys: int) -> torch.Generator:
    """A CPU torch.Generator seeded from (seed, purpose, *keys), independent across purposes."""
    words = np.random.SeedSequence([seed, _STREAM[purpose], *keys]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(words[0]) << 32 | int(words[1]))


def identity_context(seed: int, layer: int, index: int, dim: int) -> torch.Tensor:
    """The standard network (no superposition): c = 1, so y = W x. Shape (dim,)."""
    return torch.ones(dim)


def binary_context(seed: int, layer: int, index: int, dim: int) -> torch.Tensor:
    """pspBinary: c_k ∈ {−1, +1}^M uniformly at random; y = W (c_k ⊙ x). Shape (dim,)."""
    g = generator(seed, "binary", layer, index)
    return torch.randint(0, 2, (dim,), generator=g).float().mul_(2).sub_(1)


def complex_phase(seed: int, layer: int, index: int, dim: int) -> torch.Tensor:
    """The phases φ(k) ~ U[−π, π) of pspComplex's context k. Shape (dim,) float32."""
    g = generator(seed, "complex", layer, index)
    return torch.rand(dim, generator=g).mul_(2 * math.pi).sub_(math.pi)


def complex_context(seed: int, layer: int, index: int, dim: int) -> torch.Tensor:
    """pspComplex: c_k^j = e^{iφ_j(k)}, φ_j(k) ~ U[−π, π]; y = W (c_k ⊙ x). Shape (dim,) complex64."""
    return torch.polar(torch.ones(dim), complex_phase(seed, layer, index, dim))


def onepower_context(seed: int, layer: int, index: int, dim: int) -> torch.Tensor:
    """pspOnePower: c_k = c_1^k, i.e. c_k^j = e^{i k φ_j} with one phase vector φ per layer.

    k = index, as in the reference code (its context is ``time · φ`` with time counted from
    0): task 0 gets the identity context c_0 = 1 and is learned as a plain complex network.
    One scalar per task (its power) is the whole per-task memory cost. Shape (dim,) complex64.
    """
    g = generator(seed, "onepower", layer)
    phase = torch.rand(dim, generator=g).mul_(2 * math.pi).sub_(math.pi)
    k = index
    return torch.polar(torch.ones(dim), torch.remainder(phase.double() * k, 2 * math.pi).float())


def rotation_context(seed: int, layer: int, index: int, dim: int) -> torch.Tensor:
    """pspRotation: C_k Haar-random in O(M); y = W (C_k x). Shape (dim, dim).

    Sampled as Q from the QR decomposition of a standard Gaussian matrix, with the columns'
    signs fixed by sign(diag(R)) so that Q is Haar-distributed (Mezzadri 2006), not biased.
    """
    g = generator(seed, "rotation", layer, index)
    gaussian = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1
    return (q * signs).float()


CONTEXT_FUNCTIONS = {
    "none": identity_context,
    "binary": binary_context,
    "complex": complex_context,
    "onepower": onepower_context,
    "rotation": rotation_context,
}


def make_context(psp: str, seed: int, layer: int, index: int, dim: int) -> torch.Tensor:
    return CONTEXT_FUNCTIONS[psp](seed, layer, index, dim)


def local_mix_context(psp: str, seed: int, layer: int, index: int, dim: int,
                      n_contexts: int) -> torch.Tensor:
    """pspLocalMix / pspFastLocalMix (PSP §4.1.3): context k mixes its neighbours' phases,

        c_k^j = exp(i · (φ_j(k−1) + φ_j(k) + φ_j(k+1)) / 3),   magnitude 1,

    φ(k) the phases of pspComplex's context k (``complex_phase``), indices taken mod n_contexts,
    the size of the key bank (the reference's ``pick_key('local_mix')`` wraps around its bank
    of ``net_period`` keys). With a bank of exactly the contexts in use the cycle wraps
    (context 0's neighbours are n_contexts−1 and 1); with a larger bank, as the reference's 50
    keys for 10 contexts, the first and last contexts mix in keys never used alone. The mean is
    the arithmetic mean of the angles in [−π, π), as the reference code takes it, not a
    circular mean. Consecutive contexts share two of their three phase draws, so the contexts
    of nearby steps — which see nearly the same rotation — are correlated. Shape (dim,)
    complex64; the signature is make_context's plus n_contexts (bind it with functools.partial).
    """
    if psp != "complex":
        raise ValueError(f"local_mix mixes complex phases: psp must be 'complex', not {psp!r}")
    neighbours = [(index + shift) % n_contexts for shift in (-1, 0, 1)]
    phases = [complex_phase(seed, layer, k, dim).double() for k in neighbours]
    mean = ((phases[0] + phases[1] + phases[2]) / 3).float()  # (dim,)
    return torch.polar(torch.ones(dim), mean)


def bind(x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Bind a batch of inputs x (B, M) with a context: c ⊙ x (diagonal) or C x (rotation)."""
    if context.dim() == 2:
        return x @ context.T  # (B, M) — rows are C x_b
    return x * context  # (B, M), complex if the context is


def is_complex(psp: str) -> bool:
    return psp in ("complex", "onepower")


def task_permutation(seed: int, task: int, n_pixels: int,
                     permute_task0: bool = False) -> torch.Tensor | None:
    """The pixel permutation of permuted-MNIST task ``task`` (None: the plain image).

    Task 0 is the plain image (PSP's convention) unless ``permute_task0`` (SupSup's: every
    task, the first included, is a random permutation). Task t's permutation is the same
    either way, so the two conventions differ in task 0 only.
    """
    if task == 0 and not permute_task0:
        return None
    return torch.randperm(n_pixels, generator=generator(seed, "permutation", task))
