"""Packed trials: P same-shaped trial configs trained as one batched model (horizontal fusion).

    summaries = train_packed([cfg_seed0, cfg_seed1, ...], [sink0, sink1, ...])

Why: a small PSP trial keeps a device busy issuing ~100 tiny kernels per step, not computing.
Stacking the weights of P trials, (out, in) → (P, out, in), turns every op of a step into one
op over the pack: one bmm per layer instead of P mms, one optimizer update per parameter
tensor instead of P, one batch gather instead of P. The arithmetic is the same; the per-op
overhead is paid once per pack.

What each member keeps — exactly what ``trainables.loop.train`` would give it alone:
- its weights, initialised by ``build_model`` from its own seed, stacked as slice ``[p]``;
- its contexts (from its own seed and psp type, via each member's ``ContextBank``);
- its data: its own task permutations and ``batch_indices(cfg, task, ...)``;
- its optimizer state: RMSprop/Adam/SGD are element-wise, so one optimizer over the stacked
  tensors keeps a separate state per element, hence per member;
- its records (the same train and test rows, through its own sink), its divergence, its
  resumable state at each task boundary (in ``train``'s format: a member can be resumed
  alone by ``train`` or in another pack).

Bit-for-bit on CPU. Element-wise ops, row-wise ops (log_softmax) and reductions along an
axis give each member the same bits stacked as alone. Matrix products need care: for some
shapes MKL's batched path (bmm) rounds differently from the single mm that ``F.linear`` uses
— on the machines this was written on, the weight gradient of the 10-way output layer
(g^T x with 10 rows) differs in the last bit, while every other product matched. So every
product shape is *probed* once per process: a random instance is computed both ways and
compared with what ``F.linear``'s autograd gives one member alone; bmm is used where it is
bit-identical, a loop of per-member ``mm`` calls where it is not (see ``_plan``). The mean of
``F.cross_entropy`` is a cascade sum inside ``nll_loss`` that no batched reduction reproduces,
so the per-step log-probabilities of the targets are kept and each member's loss is reduced
by ``F.nll_loss`` itself at the task's end (the gradient, -1/B per target, needs no sum).
On GPU, bmm and batched reductions are used throughout and results agree to rounding.

Limits (refused with a ValueError naming the field): mlp models with one head, the permuted
stream, no penalty; members may differ only in ``seed`` and in ``psp`` within one shape
family — real diagonal {none, binary} (a masked bias serves the 'none' members), rotation,
or complex {complex, onepower}. Every context schedule (task, cycle, fast, local_mix) is
supported: members share the schedule fields, so one ``loop.context_at`` per step serves the
whole pack, and each member builds its contexts as ``train`` does (``contexts_needed``).
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainables import loop
from trainables.config import PACKED_TRAINER_TAKES, TrialConfig
from trainables.data import load_dataset
# The loop's schedule and row helpers are looked up at call time (loop.X), so that a pack
# follows the loop exactly, patched or not.
from trainables.loop import Sink, TrialSummary, resolve_device
from trainables.models import SuperposedMLP, build_model, complex_relu
from trainables.streams import PermutedStream, build_stream

FAMILY = {"none": "real", "binary": "real", "rotation": "rotation", "complex": "complex",
          "onepower": "complex"}
# Members may differ in these fields only (psp within one FAMILY).
MEMBER_FIELDS = ("seed", "psp")
# Bytes of stacked contexts kept per layer (rotation contexts are (P, in, in)).
_CONTEXT_CACHE_BYTES = 256 << 20
# Bytes of one evaluation forward's input (P, tasks, rows, width). On a GPU, stacking many
# tasks into one forward saves launches; on a CPU a 1000-image forward is already
# compute-bound and a stack that falls out of cache is slower (measured: 0.65x at 10 tasks
# in one forward), so CPU forwards stay about cache-sized.
_EVAL_BYTES = {"cuda": 256 << 20, "cpu": 8 << 20}

TaskEnd = Callable[[int, dict[str, Any]], None]


# ---- which configs can share a pack ---------------------------------------------------------
def check_packable(cfgs: Sequence[TrialConfig]) -> None:
    """Raise ValueError naming the first field that keeps ``cfgs`` from one pack."""
    if not cfgs:
        raise ValueError("a pack needs at least one trial config")
    first = cfgs[0]
    for name, allowed in PACKED_TRAINER_TAKES.items():
        for i, cfg in enumerate(cfgs):
            if getattr(cfg, name) != allowed:
                raise ValueError(f"cannot pack: field {name!r} of member {i} is "
                                 f"{getattr(cfg, name)!r}; packing supports {name}={allowed!r} only")
    for name in type(first).model_fields:
        if name in MEMBER_FIELDS:
            continue
        for i, cfg in enumerate(cfgs[1:], start=1):
            if getattr(cfg, name) != getattr(first, name):
                raise ValueError(f"cannot pack: field {name!r} differs between member 0 "
                                 f"({getattr(first, name)!r}) and member {i} ({getattr(cfg, name)!r})")
    for i, cfg in enumerate(cfgs[1:], start=1):
        if FAMILY[cfg.psp] != FAMILY[first.psp]:
            raise ValueError(f"cannot pack: field 'psp' of member {i} ({cfg.psp!r}) has another "
                             f"parameter shape than member 0 ({first.psp!r}); packable together: "
                             f"{{none, binary}}, {{rotation}}, {{complex, onepower}}")
        if cfg.learn_context and cfg.psp != first.psp:
            raise ValueError(f"cannot pack: field 'psp' differs ({first.psp!r}, {cfg.psp!r}) "
                             f"with learn_context (learned keys exist for one type at a time)")


def pack_key(cfg: TrialConfig) -> tuple:
    """Configs with equal keys can share a pack."""
    shared = tuple((name, getattr(cfg, name)) for name in type(cfg).model_fields
                   if name not in MEMBER_FIELDS)
    psp = cfg.psp if cfg.learn_context else FAMILY[cfg.psp]
    return shared + (("family", psp),)


def auto_pack_size(cfg: TrialConfig, device: str | None = None) -> int:
    """How many members make a pack pay off (measured: benchmarks/RESULTS.md, field notes).

    CPU: stacking gains ~2.4x at width 128, ~1.45x at 512, ~1x at 2048 (compute-bound), so
    pack 8 up to width 1024 and not at all above. GPU: a width-2048 step is ~16 µs of
    arithmetic against ~0.5 ms of launches; 32 members fill an H100 at widths <= 512.

    ``device`` stands in for ``cfg.device == 'auto'``: a sweep's driver may run on a CPU head
    while its trials run on GPU workers, so it says which device the trials will get.
    """
    device = resolve_device(device if cfg.device == "auto" and device else cfg.device)
    if any(getattr(cfg, name) != allowed for name, allowed in PACKED_TRAINER_TAKES.items()):
        return 1
    if device.type == "cuda":
        return 32 if cfg.units <= 1024 else 16
    return 8 if cfg.units <= 1024 else 1


def pack_groups(cfgs: Sequence[TrialConfig], pack: str | int = "auto",
                device: str | None = None) -> list[list[int]]:
    """Split ``cfgs`` into packs: lists of indices into ``cfgs``, in the configs' order.

    ``pack``: 'off' (every config alone), an int N (at most N per pack) or 'auto'
    (``auto_pack_size`` of each group, for ``device``). Only configs with equal ``pack_key``
    share a pack; configs ``check_packable`` refuses stay alone.
    """
    if pack == "off" or pack == 1:
        return [[i] for i in range(len(cfgs))]
    if isinstance(pack, str) and pack != "auto":
        raise ValueError(f"pack must be 'auto', 'off' or a positive int, got {pack!r}")
    if not isinstance(pack, str) and (not isinstance(pack, int) or pack < 1):
        raise ValueError(f"pack must be 'auto', 'off' or a positive int, got {pack!r}")
    groups: dict[tuple, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        groups.setdefault(pack_key(cfg), []).append(i)
    packs = []
    for members in groups.values():
        size = auto_pack_size(cfgs[members[0]], device) if pack == "auto" else pack
        if size <= 1:
            packs += [[i] for i in members]
            continue
        try:
            check_packable([cfgs[i] for i in members])
        except ValueError:
            packs += [[i] for i in members]
            continue
        packs += [members[k:k + size] for k in range(0, len(members), size)]
    return sorted(packs)


# ---- the per-member matrix product ----------------------------------------------------------
@dataclass(frozen=True)
class _Plan:
    """How each product of y = x W^T is computed: 'bmm' or 'loop' (one mm per member)."""
    forward: str = "bmm"
    grad_x: str = "bmm"
    grad_w: str = "bmm"
    exact: bool = True


_PLANS: dict[tuple, _Plan] = {}


def _product(a: torch.Tensor, b: torch.Tensor, how: str) -> torch.Tensor:
    """a @ b per member: (P, m, k) @ (P, k, n) → (P, m, n)."""
    if how == "bmm":
        return torch.bmm(a, b)
    out = a.new_empty(a.shape[0], a.shape[1], b.shape[2])
    for p in range(a.shape[0]):
        torch.mm(a[p], b[p], out=out[p])
    return out


class _PackedLinear(torch.autograd.Function):
    """y = x W^T per member. x (P, M, K), w (P, N, K) → (P, M, N).

    The backward computes the same products, in the same orientation, as the autograd of
    ``F.linear(x_p, w_p)`` does for one member: grad_x = g W, grad_W = g^T x (conjugated for
    complex tensors), so that a product computed per member is bit-identical to it.
    """

    @staticmethod
    def forward(ctx, x, w, plan):
        ctx.save_for_backward(x, w)
        ctx.plan = plan
        return _product(x, w.mT, plan.forward)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        plan = ctx.plan
        grad_x = _product(g, w.conj(), plan.grad_x) if ctx.needs_input_grad[0] else None
        grad_w = _product(g.mT, x.conj(), plan.grad_w) if ctx.needs_input_grad[1] else None
        return grad_x, grad_w, None


def _plan(P: int, blocks: int, rows: int, k: int, n: int, dtype: torch.dtype,
          device: torch.device, exact: bool) -> _Plan:
    """Choose bmm or a per-member loop for each product of a (P, blocks·rows, k) × (P, n, k)
    linear map, by probing which is bit-identical to ``F.linear`` on one member's ``rows``.

    Kernel choice depends on shapes, dtype and threads, not on values: one random probe per
    (shape, threads) decides for all inputs. ``blocks`` > 1: an evaluation forward that stacks
    several tasks' rows, compared with separate forwards of ``rows`` rows each.
    """
    if not exact or device.type != "cpu":
        return _Plan()
    backward = blocks == 1 and torch.is_grad_enabled()  # evaluation needs no gradient products
    with torch.enable_grad():
        return _probe(P, blocks, rows, k, n, dtype, backward=backward)


def _probe(P: int, blocks: int, rows: int, k: int, n: int, dtype: torch.dtype, *,
           backward: bool) -> _Plan:
    key = (P, blocks, rows, k, n, dtype, torch.get_num_threads(), backward)
    plan = _PLANS.get(key)
    if plan is not None:
        return plan
    g = torch.Generator().manual_seed(1234)
    wide = torch.complex128 if dtype.is_complex else torch.float64
    x = torch.randn(P, blocks * rows, k, generator=g, dtype=wide).to(dtype)
    w = torch.randn(P, n, k, generator=g, dtype=wide).to(dtype)
    grad = torch.randn(P, blocks * rows, n, generator=g, dtype=wide).to(dtype)
    want_y, want_gx, want_gw = [], [], []
    for p in range(P):
        ys, gxs = [], []
        wp = w[p].clone().requires_grad_(backward)
        for b in range(blocks):
            xp = x[p, b * rows:(b + 1) * rows].clone().requires_grad_(backward)
            y = F.linear(xp, wp)
            ys.append(y.detach())
            if backward:
                y.backward(grad[p])
                gxs.append(xp.grad)
        want_y.append(torch.cat(ys))
        if backward:
            want_gx.append(gxs[0])
            want_gw.append(wp.grad)
    choice = {}
    checks = {"forward": (lambda how: _product(x, w.mT, how), torch.stack(want_y))}
    if backward:
        checks["grad_x"] = (lambda how: _product(grad, w.conj(), how), torch.stack(want_gx))
        checks["grad_w"] = (lambda how: _product(grad.mT, x.conj(), how), torch.stack(want_gw))
    exact_all = True
    for name, (compute, want) in checks.items():
        for how in ("bmm", "loop"):
            if torch.equal(compute(how), want):
                choice[name] = how
                break
        else:
            choice[name] = "loop"
            exact_all = False
    if not exact_all:
        warnings.warn(f"packed linear {k}->{n} ({dtype}, {rows} rows): no batched formulation "
                      f"is bit-identical to F.linear here; packed results may differ from "
                      f"unpacked ones in the last bits", RuntimeWarning, stacklevel=3)
    plan = _Plan(**choice, exact=exact_all)
    _PLANS[key] = plan
    return plan


# ---- the packed network ---------------------------------------------------------------------
@dataclass
class _Layer:
    in_features: int
    out_features: int
    weight: nn.Parameter                   # (P, out, in)
    weight_imag: nn.Parameter | None       # (P, out, in) for complex PSP
    bias: nn.Parameter | None              # (P, out); members without a bias hold zeros
    bias_mask: torch.Tensor | None         # (P, 1): 1 where the member has a bias, else 0
    learned: nn.Parameter | None           # (P, n_contexts, in[, 2]) learned keys
    banks: list                            # each member's ContextBank (fixed contexts)
    rotation: bool
    cache: dict = field(default_factory=dict)   # context index → stacked context
    static: torch.Tensor | None = None          # CUDA graphs: the context buffer replayed


class PackedMLP:
    """P ``SuperposedMLP``s as stacked tensors. forward(x (P, T, N, in), contexts [T]) →
    logits (P, T, N, out): block t of every member is computed under context index
    ``contexts[t]`` (training: T = 1; evaluation: T tasks at once)."""

    def __init__(self, members: Sequence[SuperposedMLP], device: torch.device, *, exact: bool):
        self.P, self.device, self.exact = len(members), device, exact
        self.members = list(members)
        self.layers: list[_Layer] = []
        # (stacked parameter, [member p's parameter or None]): for state export and import
        self.owners: list[tuple[nn.Parameter, list[nn.Parameter | None]]] = []
        self.complex = members[0].complex
        for index in range(len(members[0].layers)):
            per_member = [m.layers[index] for m in members]
            first = per_member[0]
            weight = self._stack([l.weight for l in per_member])
            weight_imag = (self._stack([l.weight_imag for l in per_member])
                           if first.weight_imag is not None else None)
            has_bias = [l.bias is not None for l in per_member]
            bias = bias_mask = None
            if any(has_bias):
                bias = self._stack([l.bias for l in per_member], zeros=(first.out_features,))
                if not all(has_bias):
                    bias_mask = torch.tensor(has_bias, dtype=torch.float32, device=device)[:, None]
            learned = (self._stack([l.contexts.learned for l in per_member])
                       if first.contexts.learned is not None else None)
            self.layers.append(_Layer(first.in_features, first.out_features, weight, weight_imag,
                                      bias, bias_mask, learned, [l.contexts for l in per_member],
                                      rotation=first.psp == "rotation"))

    def _stack(self, tensors: list[torch.Tensor | None], zeros: tuple[int, ...] | None = None):
        like = next(t for t in tensors if t is not None)
        stacked = nn.Parameter(torch.stack([
            t.detach() if t is not None else torch.zeros(zeros or like.shape, dtype=like.dtype,
                                                         device=like.device)
            for t in tensors]).to(self.device))
        self.owners.append((stacked, list(tensors)))
        return stacked

    def parameters(self) -> list[nn.Parameter]:
        return [stacked for stacked, _ in self.owners]

    def context(self, layer: _Layer, index: int) -> torch.Tensor:
        """Every member's context ``index`` of a layer: (P, in), or (P, in, in) for rotation."""
        if layer.learned is not None:
            key = layer.learned[:, index]  # (P, in) or (P, in, 2)
            return torch.view_as_complex(key) if key.dim() == 3 else key
        stacked = layer.cache.get(index)
        if stacked is None:
            stacked = torch.stack([bank(index) for bank in layer.banks]).to(self.device)
            if stacked.numel() * stacked.element_size() * (len(layer.cache) + 1) > _CONTEXT_CACHE_BYTES:
                layer.cache.clear()
            layer.cache[index] = stacked
        return stacked

    def forward(self, x: torch.Tensor, contexts: Sequence[int]) -> torch.Tensor:
        P, T, N, _ = x.shape
        h = x  # (P, T, N, in)
        for i, layer in enumerate(self.layers):
            if i > 0:
                h = complex_relu(h)
            c = torch.stack([self.context(layer, k) for k in contexts], 1) if T > 1 else \
                self.context(layer, contexts[0])[:, None]        # (P, T, in) or (P, T, in, in)
            if layer.rotation:  # bound = C_k x per block: (P·T, N, in) @ (P·T, in, in)^T
                plan = _plan(P * T, 1, N, layer.in_features, layer.in_features, h.dtype,
                             self.device, self.exact)
                bound = _PackedLinear.apply(h.reshape(P * T, N, -1), c.reshape(P * T, *c.shape[2:]),
                                            plan).view(P, T, N, -1)
            else:
                bound = h * c[:, :, None, :]                      # (P, T, N, in)
            weight = layer.weight if layer.weight_imag is None else torch.complex(layer.weight,
                                                                                   layer.weight_imag)
            if weight.is_complex() and not bound.is_complex():
                bound = bound.to(weight.dtype)
            plan = _plan(P, T, N, layer.in_features, layer.out_features, bound.dtype, self.device,
                         self.exact)
            out = _PackedLinear.apply(bound.reshape(P, T * N, -1), weight, plan)  # (P, T·N, out)
            if layer.bias is not None:
                bias = layer.bias if layer.bias_mask is None else layer.bias * layer.bias_mask
                out = out + bias[:, None, :]
            h = out.view(P, T, N, -1)
        return h.real if h.is_complex() else h  # (P, T, N, out)

    def forward_static(self, x: torch.Tensor) -> torch.Tensor:
        """forward() for CUDA graphs: every layer's context is read from its ``static``
        buffer, whose address the graph keeps. x (P, B, in) → logits (P, B, out)."""
        h = x
        for i, layer in enumerate(self.layers):
            if i > 0:
                h = complex_relu(h)
            c = layer.static                                      # (P, in) or (P, in, in)
            bound = torch.bmm(h, c.mT) if layer.rotation else h * c[:, None, :]
            weight = layer.weight if layer.weight_imag is None else torch.complex(
                layer.weight, layer.weight_imag)
            if weight.is_complex() and not bound.is_complex():
                bound = bound.to(weight.dtype)
            out = torch.bmm(bound, weight.mT)                     # (P, B, out)
            if layer.bias is not None:
                bias = layer.bias if layer.bias_mask is None else layer.bias * layer.bias_mask
                out = out + bias[:, None, :]
            h = out
        return h.real if h.is_complex() else h

    # ---- members' state, in train()'s format ---------------------------------------------
    def export(self, optimizer: torch.optim.Optimizer, member_optimizers) -> list[dict[str, Any]]:
        """Each member's (model state_dict, optimizer state_dict), as ``train`` saves them."""
        states = []
        with torch.no_grad():
            for p, (member, member_opt) in enumerate(zip(self.members, member_optimizers)):
                member_opt.state.clear()
                for stacked, owners in self.owners:
                    mine = owners[p]
                    if mine is None:
                        continue
                    mine.copy_(stacked[p])
                    state = optimizer.state.get(stacked)
                    if state:
                        member_opt.state[mine] = {k: _slice_state(v, stacked, p)
                                                  for k, v in state.items()}
                states.append({"model": copy.deepcopy(member.state_dict()),
                               "optimizer": copy.deepcopy(member_opt.state_dict())})
        return states

    def load(self, optimizer: torch.optim.Optimizer, member_optimizers) -> None:
        """Stack the members' parameters and optimizer states (after a resume) into the pack."""
        with torch.no_grad():
            for stacked, owners in self.owners:
                for p, mine in enumerate(owners):
                    if mine is not None:
                        stacked[p].copy_(mine)
                states = [opt.state.get(mine) if mine is not None else None
                          for opt, mine in zip(member_optimizers, owners)]
                present = [s for s in states if s]
                if not present:
                    continue
                merged = {}
                for key, value in present[0].items():
                    if torch.is_tensor(value) and value.shape == stacked.shape[1:]:
                        merged[key] = torch.stack([
                            (s[key] if s else torch.zeros_like(value)).to(stacked.device)
                            for s in states])
                    else:
                        others = [s[key] for s in present]
                        if any(not _same(value, other) for other in others):
                            raise ValueError(f"cannot pack resumed members: optimizer state "
                                             f"{key!r} differs between members")
                        merged[key] = value.clone() if torch.is_tensor(value) else value
                        if torch.is_tensor(value) and optimizer.defaults.get("capturable"):
                            merged[key] = merged[key].to(stacked.device)  # captured steps live there
                optimizer.state[stacked] = merged


def _slice_state(value: Any, stacked: torch.Tensor, p: int) -> Any:
    """Member p's share of one optimizer state entry: its slice of a per-element tensor, or
    a copy of a shared scalar (the step count), on the CPU as train()'s optimizer keeps it."""
    if torch.is_tensor(value):
        if value.shape == stacked.shape:
            return value[p].clone()
        return value.detach().to("cpu", copy=True) if value.dim() == 0 else value.clone()
    return value


def _same(a: Any, b: Any) -> bool:
    if torch.is_tensor(a):
        return torch.equal(a.cpu(), b.cpu())
    return a == b


# ---- the training loop ----------------------------------------------------------------------
@dataclass
class _Member:
    cfg: TrialConfig
    sink: Sink
    on_task_end: TaskEnd | None
    stopped_at: int | None = None      # step index (in the task) at which train() would break
    summary: TrialSummary | None = None
    test_rows: list = field(default_factory=list)


def train_packed(cfgs: Sequence[TrialConfig], sinks: Sequence[Sink], *,
                 resumes: Sequence[dict[str, Any] | None] | None = None,
                 on_task_end: Sequence[TaskEnd | None] | TaskEnd | None = None,
                 on_boundary: Callable[[int, list[dict[str, Any] | TrialSummary]], None] | None = None,
                 progress: bool = False, cuda_graph: bool = False,
                 exact: bool | None = None) -> list[TrialSummary]:
    """Train ``cfgs`` as one packed model; member p's rows go to ``sinks[p]`` exactly as
    ``train(cfgs[p], sinks[p])`` would send them (bit-for-bit on CPU).

    ``resumes``: per member, a state from ``on_task_end`` (of ``train`` or of a pack) or None;
    all given states must be at the same task boundary. ``on_task_end``: one callable per
    member (or one for all), called as ``train`` calls it. ``on_boundary(task, outcomes)``:
    called once at the end of every task trained, after the sinks and ``on_task_end``, with
    one outcome per member: its state (as ``on_task_end`` gets it) while it trains, its final
    ``TrialSummary`` once it has stopped (diverged) — what checkpointing the whole pack at
    once needs, since the members' ``on_task_end`` calls cannot tell which one is the last.
    ``cuda_graph``: on CUDA, replay the
    whole training step as one CUDA graph (for small models the step is launch-bound).
    ``exact``: probe for bit-identical products (default: on CPU).
    """
    check_packable(cfgs)
    P = len(cfgs)
    if len(sinks) != P:
        raise ValueError(f"{P} configs but {len(sinks)} sinks")
    hooks = list(on_task_end) if isinstance(on_task_end, Sequence) else [on_task_end] * P
    resumes = list(resumes) if resumes is not None else [None] * P
    if len(hooks) != P or len(resumes) != P:
        raise ValueError("on_task_end and resumes need one entry per config")
    cfg = cfgs[0]
    device = resolve_device(cfg.device)
    exact = device.type == "cpu" if exact is None else exact
    if cuda_graph and device.type != "cuda":
        raise ValueError("cuda_graph needs a CUDA device")
    if cuda_graph and cfg.learn_context:
        raise ValueError("cuda_graph supports fixed contexts only (learn_context=False)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    dataset = load_dataset(cfg.dataset, cfg.data_dir).to(device)
    streams: dict[int, PermutedStream] = {}
    slot_of = []
    for c in cfgs:  # members with one seed see the same data: keep it once
        if c.seed not in streams:
            streams[c.seed] = build_stream(c, dataset)
        slot_of.append(list(streams).index(c.seed))
    slots = torch.tensor(slot_of, device=device)[:, None]            # (P, 1)
    in_features = next(iter(streams.values())).in_features

    members = [_build_member(c, in_features, device) for c in cfgs]
    member_opts = [loop.make_optimizer(c, m.parameters()) for c, m in zip(cfgs, members)]
    first_task = 0
    given = [r for r in resumes if r is not None]
    if given:
        if len(given) != P or len({r["next_task"] for r in given}) != 1:
            raise ValueError("every member of a resumed pack needs a state at the same task boundary")
        for member, opt, state in zip(members, member_opts, resumes):
            member.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
        first_task = given[0]["next_task"]
    model = PackedMLP(members, device, exact=exact)
    if device.type == "cpu" and max(p.numel() * p.element_size() for p in model.parameters()) > 32 << 20:
        _reuse_large_allocations()
    optimizer = _optimizer(cfg, model.parameters(), capturable=cuda_graph)
    if given:
        model.load(optimizer, member_opts)

    state = [_Member(c, s, h) for c, s, h in zip(cfgs, sinks, hooks)]
    spt, batch = cfg.steps_per_task, cfg.batch_size
    loss_grad = torch.full((P, batch), -1.0 / batch, device=device)  # d mean / d log p(target)
    step_fn = None
    for task in range(first_task, cfg.tasks):
        live = [m for m in state if m.summary is None]
        if not live:
            break
        x_task, y_task = _task_data(streams, task)                   # (S, N, D), (N,)
        indices = torch.stack([loop.batch_indices(c, task, len(y_task), device) for c in cfgs], 1)
        # (spt, P, B): every batch of the task, as rows of the flattened (S·N, D) data: one
        # index_select per step gathers every member's batch (~3x faster than x[slots, index]).
        rows = (indices + slots * len(y_task)).view(spt, P * batch)
        labels = indices.view(spt, P * batch)
        x_task = x_task.view(-1, x_task.shape[-1])                   # (S·N, D)
        # Per-step records stay on the device.
        picked = torch.empty(spt, P, batch, device=device)   # log p(target) of each example
        correct = torch.empty(spt, P, device=device)
        contexts: list[int] = []
        for m in state:
            m.stopped_at, m.test_rows = None, []
        bar = loop._progress_bar(progress, task, cfg)
        if cuda_graph:
            step_fn = _GraphStep.build(step_fn, model, optimizer, x_task, y_task, loss_grad)

        for i in range(spt):
            step = task * spt + i + 1
            context = loop.context_at(cfg, step, task)
            if step_fn is not None:
                step_fn.run(rows[i], labels[i], context, picked[i], correct[i])
            else:
                _eager_step(model, optimizer, x_task, y_task, rows[i], labels[i], context,
                            loss_grad, picked[i], correct[i])
            contexts.append(context)
            if bar is not None:
                bar.update(1)

            due = loop.tasks_to_evaluate(cfg, step, task)
            if due:
                finite = torch.isfinite(picked[: i + 1]).flatten(start_dim=2).all(2).all(0).tolist()
                for m, ok in zip(state, finite):
                    if m.summary is None and m.stopped_at is None and not ok:
                        m.stopped_at = i  # train() breaks here: no more steps, no evaluation
                running = [p for p, m in enumerate(state) if m.summary is None and m.stopped_at is None]
                if not running:
                    break
                for eval_task, values in _evaluate(model, streams, slot_of, cfg, due).items():
                    n_test = values["n"]
                    for p in running:
                        state[p].test_rows.append(loop._test_row(
                            step, task, context, eval_task, values["loss"][p],
                            values["accuracy"][p], n_test))
        if bar is not None:
            bar.close()

        losses = _exact_losses(picked[: len(contexts)], exact)  # (steps, P)
        finished = []
        for p, m in enumerate(state):
            if m.summary is not None:
                continue
            n = len(contexts) if m.stopped_at is None else m.stopped_at + 1
            train_rows = loop._train_rows(task * spt, task, contexts[:n], losses[:n, p],
                                     correct[:n, p], batch)
            bad_step = loop._first_non_finite(train_rows)
            if bad_step is not None:
                rows = [r for r in train_rows if r["step"] <= bad_step]
                rows += [r for r in m.test_rows if r["step"] < bad_step]
                m.sink(task, rows)
                m.summary = TrialSummary("diverged", bad_step, task, str(device),
                                         diverged_at_step=bad_step)
                continue
            m.sink(task, train_rows + m.test_rows)
            finished.append(p)
        steps_done = (task + 1) * spt
        states: dict[int, dict[str, Any]] = {}
        if on_boundary is not None or any(state[p].on_task_end is not None for p in finished):
            exported = model.export(optimizer, member_opts)
            states = {p: {**exported[p], "next_task": task + 1, "steps_done": steps_done,
                          "penalty": None} for p in finished}
        for p in finished:
            if state[p].on_task_end is not None:
                state[p].on_task_end(task, states[p])
        if on_boundary is not None:
            on_boundary(task, [m.summary or states[p] for p, m in enumerate(state)])
    return [m.summary or TrialSummary("completed", cfg.tasks * spt, cfg.tasks, str(device))
            for m in state]


def _build_member(cfg: TrialConfig, in_features: int, device: torch.device) -> SuperposedMLP:
    """Member p's network exactly as ``train`` builds it (same seed, same context banks)."""
    needed = loop.contexts_needed(cfg) if hasattr(loop, "contexts_needed") else cfg.tasks
    model = build_model(cfg, in_features, n_contexts=needed).to(device)
    if cfg.context_schedule == "local_mix":  # as train(): context k mixes the phases of k±1
        loop.use_context_function(model, loop.partial(loop.local_mix_context,
                                                      n_contexts=cfg.n_contexts))
    return model


_MALLOC_TUNED = False


def _reuse_large_allocations() -> None:
    """Let glibc recycle freed blocks above 32 MiB instead of returning them to the OS.

    A stacked (P, 2048, 2048) gradient or optimizer temporary is 64 MiB at P = 4: above
    glibc's largest dynamic mmap threshold (32 MiB), so each is a fresh mmap whose pages fault
    in on first touch, every step. Measured on the 2-core machine: an RMSprop update of
    4 × 2048² parameters took 50 ms instead of 24 ms. A single model's tensors stay under the
    threshold and are recycled, so without this a pack was slower than separate models.
    The cost: the process keeps its peak heap instead of giving it back (a training process
    reaches its peak every step anyway). Linux/glibc only; elsewhere nothing happens.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    try:
        import ctypes
        import ctypes.util
        import platform

        if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
            return
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
        libc.mallopt(m_mmap_threshold, 1 << 30)
        libc.mallopt(m_trim_threshold, 1 << 31)
    except (OSError, AttributeError, ValueError):
        pass


def _optimizer(cfg: TrialConfig, params, *, capturable: bool) -> torch.optim.Optimizer:
    """``loop.make_optimizer``, or its CUDA-graph-capturable twin (same update rule)."""
    if not capturable:
        return loop.make_optimizer(cfg, params)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, capturable=True)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, capturable=True)
    return torch.optim.SGD(params, lr=cfg.lr)


def _task_data(streams: dict[int, PermutedStream], task: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One task's training data per seed, permuted once: x (S, N, D), y (N,) (labels are not
    permuted, so all members share them)."""
    sets = [stream.train_set(task) for stream in streams.values()]
    return torch.stack([x for x, _ in sets]), sets[0][1]


def _eager_step(model: PackedMLP, optimizer, x_task, y_task, rows, labels, context, loss_grad,
                picked_out, correct_out) -> None:
    """One optimizer update of every member: the batch is rows (P·B,) of x_task (S·N, D) and
    labels (P·B,) of y_task (N,). Records log p(target) (P, B) and the number of correct
    predictions (P,) into the given outputs; no host sync."""
    P, B = loss_grad.shape
    xb = x_task.index_select(0, rows).view(P, B, -1)            # (P, B, D)
    yb = y_task.index_select(0, labels).view(P, B)              # (P, B)
    logits = model.forward(xb[:, None], [context])[:, 0]        # (P, B, classes)
    log_p = torch.log_softmax(logits, -1)
    target_log_p = log_p.gather(-1, yb[..., None])[..., 0]     # (P, B)
    optimizer.zero_grad(set_to_none=True)
    # d(mean_b -log p_b)/d log p_b = -1/B: the gradient F.cross_entropy's mean gives each member
    target_log_p.backward(loss_grad)
    optimizer.step()
    picked_out.copy_(target_log_p.detach())
    correct_out.copy_((logits.argmax(-1) == yb).sum(-1))


def _exact_losses(picked: torch.Tensor, exact: bool) -> torch.Tensor:
    """Each member's mean loss per step (steps, P) from log p(target) (steps, P, B).

    Exact: ``F.nll_loss`` on each (step, member) row, the very reduction F.cross_entropy's
    mean uses (a cascade sum no batched torch reduction reproduces bit for bit). About 4 µs
    per row, once per task. Otherwise one batched mean.
    """
    if not exact:
        return -picked.mean(-1)
    steps, P, B = picked.shape
    zeros = torch.zeros(B, dtype=torch.long, device=picked.device)
    rows = picked.reshape(steps * P, B, 1)
    return torch.stack([F.nll_loss(rows[r], zeros) for r in range(steps * P)]).view(steps, P)


@torch.no_grad()
def _evaluate(model: PackedMLP, streams, slot_of: list[int], cfg: TrialConfig,
              due: list[int]) -> dict[int, dict[str, Any]]:
    """Test every member on every due task, batched across members and tasks.

    Mirrors ``loop.evaluate`` per (member, task): the test split in chunks of EVAL_BATCH,
    loss summed per chunk by F.cross_entropy (in chunk order), accuracy counted. Returns
    {task: {"loss": [per member], "accuracy": [per member], "n": examples}}.
    """
    P = model.P
    device = model.device
    # Blocks of equal size evaluated in one forward: (task, start, stop).
    first_x, first_y = next(iter(streams.values())).test_set(due[0])
    n_test = len(first_y)
    chunk = loop.EVAL_BATCH  # read at call time, as loop.evaluate does
    chunks = [(s, min(s + chunk, n_test)) for s in range(0, n_test, chunk)]
    width = max(first_x.shape[1], cfg.units)
    sums = {t: torch.zeros(P, device=device) for t in due}
    hits = {t: torch.zeros(P, device=device) for t in due}
    for start, stop in chunks:
        rows = stop - start
        budget = _EVAL_BYTES.get(device.type, _EVAL_BYTES["cpu"])
        per_forward = max(1, budget // (P * rows * width * 4))
        for g0 in range(0, len(due), per_forward):
            group = due[g0:g0 + per_forward]
            x = torch.empty(P, len(group), rows, first_x.shape[1], device=device)  # (P, T, rows, D)
            ys = []
            for j, t in enumerate(group):
                per_seed = [stream.test_set(t) for stream in streams.values()]  # permuted per seed
                for p, slot in enumerate(slot_of):
                    x[p, j].copy_(per_seed[slot][0][start:stop])
                ys.append(per_seed[0][1][start:stop])
            y = torch.stack(ys)                                      # (T, rows)
            logits = model.forward(x, [loop.eval_context(cfg, t) for t in group])  # (P, T, rows, C)
            hit = (logits.argmax(-1) == y).sum(-1)                   # (P, T)
            if model.exact:
                loss = torch.stack([torch.stack([
                    F.cross_entropy(logits[p, j], y[j], reduction="sum") for j in range(len(group))])
                    for p in range(P)])                              # (P, T)
            else:
                loss = F.cross_entropy(logits.flatten(0, 2), y.expand(P, -1, -1).flatten(),
                                       reduction="none").view(P, len(group), rows).sum(-1)
            for j, t in enumerate(group):
                sums[t] += loss[:, j]
                hits[t] += hit[:, j]
    out = {}
    for t in due:
        out[t] = {"loss": (sums[t] / n_test).tolist(), "accuracy": (hits[t] / n_test).tolist(),
                  "n": n_test}
    return out


# ---- CUDA graphs ----------------------------------------------------------------------------
class _GraphStep:
    """The packed training step captured as one CUDA graph.

    Replaying the graph launches every kernel of a step (gather, forward, backward, optimizer)
    in one call, which is what a launch-bound small model needs. Everything the graph reads
    lives in static buffers refreshed by device copies: the task's data (once per task), the
    contexts (when the context index changes) and the step's batch indices (every step).
    """

    def __init__(self, model: PackedMLP, optimizer, x_task, y_task, loss_grad):
        self.model, self.optimizer = model, optimizer
        self.x = x_task.clone()                                  # (S·N, D)
        self.y = y_task.clone()                                  # (N,)
        self.rows = torch.zeros(loss_grad.numel(), dtype=torch.long, device=x_task.device)
        self.labels = torch.zeros_like(self.rows)
        self.loss_grad = loss_grad
        self.context_index: int | None = None
        self.contexts = [model.context(layer, 0).clone() for layer in model.layers]
        self._use_static_contexts()
        self.graph = None

    @classmethod
    def build(cls, previous: "_GraphStep | None", model, optimizer, x_task, y_task,
              loss_grad) -> "_GraphStep":
        if previous is not None and previous.x.shape == x_task.shape:
            previous.x.copy_(x_task)
            previous.y.copy_(y_task)
            return previous
        step = cls(model, optimizer, x_task, y_task, loss_grad)
        step._capture()
        return step

    def _use_static_contexts(self) -> None:
        # The graph reads contexts from fixed addresses: route model.context to them.
        for layer, buffer in zip(self.model.layers, self.contexts):
            layer.static = buffer

    def _step(self):
        P, B = self.loss_grad.shape
        xb = self.x.index_select(0, self.rows).view(P, B, -1)
        yb = self.y.index_select(0, self.labels).view(P, B)
        h = self.model.forward_static(xb)
        log_p = torch.log_softmax(h, -1)
        target_log_p = log_p.gather(-1, yb[..., None])[..., 0]
        target_log_p.backward(self.loss_grad)
        self.optimizer.step()
        return target_log_p.detach(), (h.argmax(-1) == yb).sum(-1).float()

    def _capture(self) -> None:
        params = self.model.parameters()
        saved_params = [p.detach().clone() for p in params]
        saved_state = copy.deepcopy(self.optimizer.state_dict())
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: allocations and lazy init happen outside capture
            for _ in range(3):
                self.optimizer.zero_grad(set_to_none=True)
                self._step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.out_picked, self.out_correct = self._step()
        with torch.no_grad():  # undo the warm-up updates: the trial has not taken a step yet
            for p, saved in zip(params, saved_params):
                p.copy_(saved)
            _restore_optimizer_state(self.optimizer, saved_state)

    def run(self, rows, labels, context: int, picked_out, correct_out) -> None:
        if context != self.context_index:
            for layer, buffer in zip(self.model.layers, self.contexts):
                buffer.copy_(self.model.context(layer, context))
            self.context_index = context
        self.rows.copy_(rows)
        self.labels.copy_(labels)
        self.graph.replay()
        picked_out.copy_(self.out_picked)
        correct_out.copy_(self.out_correct)


def _restore_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Copy a saved state_dict's tensors into the optimizer's live state tensors in place
    (a captured graph holds their addresses, so they must not be replaced)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, param in enumerate(params):
        live = optimizer.state.get(param, {})
        for key, value in saved["state"].get(index, {}).items():
            if torch.is_tensor(value) and key in live and torch.is_tensor(live[key]):
                live[key].copy_(value)
        for key, value in live.items():  # state that did not exist before the warm-up
            if torch.is_tensor(value) and key not in saved["state"].get(index, {}):
                value.zero_()




def packed_flops_per_step(cfg: TrialConfig, in_features: int = 784) -> float:
    """Training FLOPs of one member's step (forward + backward ≈ 3× forward)."""
    widths = [in_features] + [cfg.units] * cfg.depth + [cfg.output_units]
    factor = 4 if FAMILY[cfg.psp] == "complex" else 1
    forward = sum(2 * a * b * factor for a, b in zip(widths[:-1], widths[1:]))
    if cfg.psp == "rotation":
        forward += sum(2 * a * a for a in widths[:-1])
    return 3 * forward * cfg.batch_size


__all__ = ["train_packed", "check_packable", "pack_groups", "pack_key", "auto_pack_size",
           "PackedMLP", "packed_flops_per_step", "FAMILY"]
