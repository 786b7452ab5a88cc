"""The batched trainer: B LoRA adapters trained together over one frozen base (and, through
seal.inner.score, scored together).

The inner loop fits hundreds of small adapters at batch size 1; one such step leaves a GPU (and
most of a CPU's vector units) idle. Here every targeted linear layer keeps the B adapters stacked,
A as [B, r, in] and B as [B, out, r], and each row of a batch carries the index of its own adapter:

    y = base(x) + scale[i] * (x @ A[i]^T) @ B[i]^T          (one torch.bmm pair over all rows)

so one forward/backward of the shared base advances B fits at once. Nothing is shared between
adapters except the frozen base, so each one trains exactly as if it were alone:

- initial values are copied from peft (`train.attach_lora` with the fit's seed), not re-derived;
- each adapter walks its own seeded data order, batch size and epochs (`train.schedule`, the
  order `train.train` walks too); one that runs out of steps stops updating while the others go on;
- the loss is the sum over adapters of each adapter's own per-batch token mean (what the
  sequential loop's `model(**batch).loss` is), so adapter b's gradient is its own loss's gradient;
- AdamW runs per adapter (its own lr, weight decay and step count) with torch.optim.AdamW's
  update rule: every adapter's parameters are one row of a flat tensor (`MultiLora.flat`), which
  torch's fused AdamW kernel steps; adapters without a batch this step do not move; `lr_scale`
  takes a learning-rate schedule's factor per step.

A pass packs its rows end to end as one row where the model allows it (`Packing`,
`packing_works`): position ids restart at each row and attention runs per row (packed_attention,
registered with transformers' attention interface; on a CPU on each row's slice, on a GPU per
group of rows padded to similar lengths), so the linear layers, norms, MLPs, logits and loss
compute no padding and every adapter with a step left takes it in every pass. Otherwise rows
are padded and `pick_adapters` groups adapters whose next batches have similar lengths.

`tests/integration/test_multilora.py` checks adapters, losses and answers against the sequential
path.
Adapters are written in peft's on-disk format, so peft and vLLM load them like any other.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

from seal.config import LoraConfig
from seal.inner.train import (
    IGNORE,
    Example,
    attach_lora,
    collate,
    encode,
    labelled_logits,
    lr_factor,
    peft_config,
    schedule,
)
from seal.seeds import seed_everything

log = logging.getLogger(__name__)

BETA1, BETA2, EPS = 0.9, 0.999, 1e-8  # torch.optim.AdamW defaults, as train.train uses them
PEFT_PREFIX = "base_model.model."


@dataclass
class FitJob:
    """One adapter to fit: its examples, LoRA settings (rank/targets/dropout shared by a batch) and seed."""

    examples: list[Example]
    lora: LoraConfig
    seed: int


@dataclass
class FitResult:
    weights: dict[str, tuple[Any, Any]]  # module name -> (A [r, in], B [out, r]), on CPU
    stats: dict[str, float] = field(default_factory=dict)  # steps, first_loss, last_loss (as train.train)


def shape_key(lora: LoraConfig) -> tuple:
    """Adapters can share a batch when their stacked tensors have the same shape."""
    return (lora.rank, tuple(sorted(lora.target_modules)), lora.dropout)


# --- the routed layer ------------------------------------------------------------------------------


class Router:
    """Per-row adapter indices, shared by every MultiLoraLinear of a model (None: base only).
    `whole`: row i uses adapter i for every i, so the layers use the stacks as they are, with no
    per-row copies of the adapters' weights (and no scatter of their gradients)."""

    def __init__(self) -> None:
        self.idx: Any = None
        self.whole = False
        self.pack: Packing | None = None  # set while a packed pass runs: its rows' layout


def _layer_class():
    import torch
    from torch import nn

    class MultiLoraLinear(nn.Module):
        """A frozen nn.Linear plus B stacked LoRA adapters; row n of the input uses adapter idx[n]."""

        def __init__(self, base: nn.Linear, n: int, rank: int, router: Router, dropout: float = 0.0):
            super().__init__()
            self.base, self.router, self.dropout = base, router, dropout
            dev = base.weight.device
            # fp32 adapters over a bf16 base, like peft's autocast_adapter_dtype: Adam needs the range.
            self.A = nn.Parameter(torch.zeros(n, rank, base.in_features, device=dev))
            self.B = nn.Parameter(torch.zeros(n, base.out_features, rank, device=dev))
            self.register_buffer("scale", torch.ones(n, device=dev))
            self.scales = [1.0] * n  # the same, as Python floats
            self.same_scale: float | None = 1.0  # every adapter's scale, when they share one

        def set_scale(self, i: int, scale: float) -> None:
            self.scale[i] = scale
            self.scales[i] = scale
            self.same_scale = scale if all(s == scale for s in self.scales) else None

        def forward(self, x):
            y = self.base(x)
            idx = self.router.idx
            if idx is None:
                return y
            xa = x.to(self.A.dtype)
            if self.dropout and self.training:
                xa = torch.nn.functional.dropout(xa, self.dropout)
            if self.router.whole:
                a, b, scale = self.A, self.B, self.scale
            else:
                a, b, scale = self.A[idx], self.B[idx], self.scale[idx]  # [N, r, in], [N, out, r]: per row
            shape = xa.shape
            pack = self.router.pack
            if pack is not None:  # [1, T, in] packed rows: this layer's bmm runs on them padded
                xa = pack.pad_input(xa)
            h = torch.bmm(xa.reshape(idx.shape[0], -1, shape[-1]), a.transpose(1, 2))
            if self.same_scale is None:  # scales differ: applied per row on the rank side, the smaller
                h = h * scale.view(-1, 1, 1)
            delta = torch.bmm(h, b.transpose(1, 2))
            if pack is not None:
                delta = pack.unpad(delta)
            delta = delta.reshape(*shape[:-1], -1)
            if self.same_scale is not None:  # one scale: y + scale * delta in one operator, as peft adds it
                return torch.add(y, delta, alpha=self.same_scale).to(y.dtype)
            return (y + delta).to(y.dtype)

    return MultiLoraLinear


# --- packed passes: rows without padding ------------------------------------------------------------

PACKED_ATTENTION = "seal_packed"  # the name under which transformers finds packed_attention


_INDEX_FNS: dict[str, Any] = {}


def _index_fns() -> dict[str, Any]:
    """Row scatter and gather whose backward passes are each other (copies, no accumulation): what
    index_select's own backward does with an add into zeros, which is slow on a CPU."""
    if _INDEX_FNS:
        return _INDEX_FNS
    import torch

    class Scatter(torch.autograd.Function):
        """x [T, ...] -> [size, ...]: row idx[t] is x[t], the other rows 0 (idx: distinct)."""

        @staticmethod
        def forward(ctx: Any, x: Any, idx: Any, size: int) -> Any:
            ctx.save_for_backward(idx)
            return x.new_zeros((size, *x.shape[1:])).index_copy_(0, idx, x)

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            (idx,) = ctx.saved_tensors
            return grad.index_select(0, idx), None, None

    class Gather(torch.autograd.Function):
        """x [size, ...] -> [T, ...]: row t is x[idx[t]] (idx: distinct)."""

        @staticmethod
        def forward(ctx: Any, x: Any, idx: Any) -> Any:
            ctx.save_for_backward(idx)
            ctx.size = x.shape[0]
            return x.index_select(0, idx)

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            (idx,) = ctx.saved_tensors
            return grad.new_zeros((ctx.size, *grad.shape[1:])).index_copy_(0, idx, grad), None

    _INDEX_FNS.update(scatter=Scatter.apply, gather=Gather.apply)
    return _INDEX_FNS


# How packed passes run attention: row by row (True) or per group of padded rows (False); None: by
# the device (see Packing). Tests set it to check both on a CPU.
PER_ROW: bool | None = None


class Packing:
    """A pass's rows laid end to end as one row of T tokens (position ids restart at each row), so
    every token-wise part of the model (the linear layers, norms, MLPs, logits, loss) computes no
    padding. The LoRA layers' bmm sees the rows padded to the longest (W), through `pad`
    [T, ...] -> [N, W, ...] (padding slots 0) and `unpad` back. Attention runs on each row's slice
    of the packed row where `per_row` (a CPU), else per group of rows of similar length, padded
    (`pad_groups`, `unpad_groups`)."""

    def __init__(self, lengths: list[int], device: Any):
        import torch

        self.n, self.width = len(lengths), max(lengths)
        self.lengths = lengths
        self.position_ids = torch.tensor([j for ln in lengths for j in range(ln)], device=device).unsqueeze(0)
        self.fns = _index_fns()
        self._src: Any = None
        self._padded: Any = None
        # token t of row i (the packed row's starts[i] + j) sits in padded slot i * W + j
        slots = [i * self.width + j for i, ln in enumerate(lengths) for j in range(ln)]
        self.slots = torch.tensor(slots, device=device)
        # On a CPU attention runs row by row on views of the packed row: no padding and no copies,
        # and a call per row costs little there (per group of padded rows it ran 1.05-1.5x slower
        # at 4-96 rows, bench/attention_rows.py). A GPU pays a kernel launch per call, so there attention
        # pads per group of rows of similar length (its cost grows with rows x width^2): group g's
        # rows sit in its own [n_g, W_g] block of one buffer of `attn_size` slots.
        self.per_row = device.type == "cpu" if PER_ROW is None else PER_ROW
        if self.per_row:
            return
        self.groups = attention_groups(lengths)
        starts = [0]
        for ln in lengths[:-1]:
            starts.append(starts[-1] + ln)
        where = [0] * sum(lengths)
        offset = 0
        self.group_shapes = []
        for rows in self.groups:
            width = max(lengths[i] for i in rows)
            for k, i in enumerate(rows):
                for j in range(lengths[i]):
                    where[starts[i] + j] = offset + k * width + j
            self.group_shapes.append((len(rows), width))
            offset += len(rows) * width
        self.attn_size = offset
        self.attn_slots = torch.tensor(where, device=device)

    def pad_input(self, x: Any) -> Any:
        """A LoRA layer's input [1, T, in] padded, [N, W, in]; layers that read the same tensor
        (q, k and v projections) share one padded copy."""
        if self._src is not x:
            self._src, self._padded = x, self.pad(x.reshape(-1, x.shape[-1]))
        return self._padded

    def pad(self, x: Any) -> Any:
        """[T, ...] -> [N, W, ...]"""
        return self.fns["scatter"](x, self.slots, self.n * self.width).view(self.n, self.width, *x.shape[1:])

    def unpad(self, x: Any) -> Any:
        """[N, W, ...] -> [T, ...]"""
        return self.fns["gather"](x.reshape(self.n * self.width, *x.shape[2:]), self.slots)

    def pad_groups(self, x: Any) -> list[Any]:
        """[T, ...] -> one [n_g, W_g, ...] per attention group"""
        buf = self.fns["scatter"](x, self.attn_slots, self.attn_size)
        parts = buf.split([n * w for n, w in self.group_shapes])  # views; backward is one cat
        return [part.view(n, w, *x.shape[1:]) for part, (n, w) in zip(parts, self.group_shapes, strict=True)]

    def unpad_groups(self, xs: list[Any]) -> Any:
        """one [n_g, W_g, ...] per attention group -> [T, ...]"""
        import torch

        flat = torch.cat([x.reshape(-1, *x.shape[2:]) for x in xs]) if len(xs) > 1 else xs[0].flatten(0, 1)
        return self.fns["gather"](flat, self.attn_slots)


# A separate attention call per group costs about this many (token x token) units on top of its
# rows x width^2: a heuristic for attention_groups.
GROUP_OVERHEAD = 64 * 64


def attention_groups(lengths: list[int]) -> list[list[int]]:
    """Rows (indices into `lengths`) split into groups of similar length, minimising the padded
    attention's cost, sum over groups of rows x width^2 (+ GROUP_OVERHEAD each): contiguous runs of
    the rows sorted by length, the best split found by dynamic programming."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[k]: cost of the first k rows (longest first)
    cut = [0] * (n + 1)
    for k in range(1, n + 1):
        for j in range(k):  # rows j..k-1 form the last group; its width is row j's length
            cost = best[j] + (k - j) * lengths[order[j]] ** 2 + GROUP_OVERHEAD
            if cost < best[k]:
                best[k], cut[k] = cost, j
    groups, k = [], n
    while k > 0:
        groups.append(order[cut[k]:k])
        k = cut[k]
    return groups[::-1]


_ACTIVE_PACKING: list[Packing] = []  # the packed pass running now (packed_attention reads it)


def packed_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, scaling: Any = None,
                     dropout: float = 0.0, sliding_window: int | None = None, softcap: Any = None,
                     **kwargs: Any) -> tuple[Any, None]:
    """transformers' attention interface over a packed pass: query [1, H, T, D] and key/value
    [1, Hkv, T, D] attend causally (within a sliding window where the layer has one) with torch's
    SDPA, row by row (`Packing.per_row`: each row's slice of the packed row) or per group of rows
    padded to their longest, and come back packed: [1, T, H, D], what the interface returns. Each
    row attends only to itself, exactly as it would alone."""
    import torch

    if softcap:
        raise ValueError("packed attention does not implement logit soft-capping")
    pack = _ACTIVE_PACKING[-1]
    heads, dim = query.shape[1], query.shape[-1]
    p = dropout if module.training else 0.0
    if pack.per_row:
        # split, not slices: one backward node that concatenates the rows' gradients (a slice's
        # backward writes into a zero tensor of the whole row, which grows with rows x tokens)
        lengths = pack.lengths
        outs = [_attend(q, k, v, sliding_window, scaling, p)
                for q, k, v in zip(query.split(lengths, 2), key.split(lengths, 2), value.split(lengths, 2),
                                   strict=True)]
        return torch.cat(outs, 2).transpose(1, 2), None

    def padded(t: Any) -> list[Any]:  # [1, h, T, d] -> per group [n_g, h, W_g, d]
        return [g.transpose(1, 2) for g in pack.pad_groups(t.squeeze(0).transpose(0, 1))]

    outs = [_attend(q, k, v, sliding_window, scaling, p).transpose(1, 2)  # [n_g, W_g, H, D]
            for q, k, v in zip(padded(query), padded(key), padded(value), strict=True)]
    out = pack.unpad_groups(outs)  # [T, H, D]
    return out.reshape(1, -1, heads, dim), None


def _attend(q: Any, k: Any, v: Any, sliding_window: int | None, scaling: Any, dropout: float) -> Any:
    """Causal SDPA over [n, H, W, D] rows that start at position 0 (a sliding window's mask where
    the rows are longer than the window); grouped-query attention (each key/value head serving
    heads // kv_heads queries) inside SDPA."""
    import torch
    import torch.nn.functional as F

    width = q.shape[2]
    mask = None
    if sliding_window and width > sliding_window:
        i = torch.arange(width, device=q.device)
        mask = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < sliding_window)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, dropout_p=dropout,
                                          scale=scaling, enable_gqa=k.shape[1] != q.shape[1])


def _no_mask(*args: Any, **kwargs: Any) -> None:
    return None  # packed_attention builds each row's causal mask itself


def _register_packed_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register(PACKED_ATTENTION, packed_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(PACKED_ATTENTION, _no_mask)


def _packed_forward(model: Any, pack: Packing, rows: list[list[int]]) -> Any:
    """The model's logits [T, vocab] on `rows` laid end to end as `pack` describes (packed_attention
    reads the pack while the forward runs)."""
    import torch

    ids = torch.tensor([t for r in rows for t in r], device=pack.position_ids.device).unsqueeze(0)
    _ACTIVE_PACKING.append(pack)
    try:
        return model(input_ids=ids, position_ids=pack.position_ids).logits.squeeze(0)  # a view: no copy back
    finally:
        _ACTIVE_PACKING.pop()


def _packed_logits(model: Any, rows: list[list[int]], lengths: list[int]) -> Any:
    return _packed_forward(model, Packing(lengths, next(model.parameters()).device), rows)


def packing_works(model: Any) -> bool:
    """Whether `model` can run packed passes: its attention goes through transformers' attention
    interface and a packed pass gives the logits that padded rows give (checked once per model on
    two short rows; a model that ignores position ids, or masks differently, fails the check and
    trains on padded rows instead)."""
    import torch

    cached = getattr(model, "_seal_packing_ok", None)
    if cached is not None:
        return cached
    ok = False
    conf = model.config
    before = getattr(conf, "_attn_implementation", None)
    if not getattr(conf, "attn_logit_softcapping", None):
        try:
            _register_packed_attention()
            model.set_attn_implementation(PACKED_ATTENTION)
            if model.config._attn_implementation != PACKED_ATTENTION:
                raise ValueError("the model does not take an attention implementation at run time")
            vocab = model.config.vocab_size if hasattr(model.config, "vocab_size") else 100
            gen = torch.Generator().manual_seed(0)
            rows = [torch.randint(0, min(vocab, 1000), (n,), generator=gen).tolist() for n in (7, 4)]
            with torch.no_grad():
                packed = _packed_logits(model, rows, [7, 4])
                model.set_attn_implementation(before)
                ref = [model(input_ids=torch.tensor([r], device=packed.device)).logits[0] for r in rows]
            ok = torch.allclose(packed, torch.cat(ref), rtol=1e-3, atol=1e-4)
            if not ok:
                log.info("packed passes unavailable for this model (packed logits differ): padded rows")
        except Exception as e:  # noqa: BLE001  (any failure means: train on padded rows)
            log.info("packed passes unavailable for this model (%s): training on padded rows", e)
        finally:
            if getattr(model.config, "_attn_implementation", None) != before:
                model.set_attn_implementation(before)
    model._seal_packing_ok = ok
    return ok


def target_names(model: Any, targets: list[str] | tuple[str, ...]) -> list[str]:
    """Linear modules peft would wrap: the name, or its last component, is a target."""
    from torch import nn

    return [
        name for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear) and (name in targets or name.rsplit(".", 1)[-1] in targets)
    ]


class MultiLora:
    """Installs B routed adapters into a model in place; `remove()` puts the plain layers back."""

    def __init__(self, model: Any, n: int, rank: int, targets: list[str] | tuple[str, ...], dropout: float = 0.0,
                 train: bool = False):
        """`train`: the adapters will be trained (`flat` holds them and their gradients; None otherwise)."""
        cls = _layer_class()
        self.model, self.n, self.rank = model, n, rank
        self.router = Router()
        self.names = target_names(model, targets)
        if not self.names:
            raise ValueError(f"no linear module matches LoRA targets {list(targets)}")
        self.layers: dict[str, Any] = {}
        for name in self.names:
            parent, attr = self._parent(name)
            layer = cls(getattr(parent, attr), n, rank, self.router, dropout)
            setattr(parent, attr, layer)
            self.layers[name] = layer
        self.flat = self._flatten() if train else None

    def _flatten(self) -> Any:
        """Every layer's A and B as views of one [n, P] tensor, adapter i's parameters in row i, and
        their gradients as views of another: the optimizer then steps every adapter's parameters
        in a handful of operators, where it took that many per stacked tensor (one CPU kernel
        each). Autograd adds each backward pass's gradient into the views in place."""
        import torch
        from torch import nn

        params = [(layer, attr) for layer in self.layers.values() for attr in ("A", "B")]
        sizes = [getattr(layer, attr)[0].numel() for layer, attr in params]
        first = getattr(*params[0])
        flat = torch.zeros(self.n, sum(sizes), dtype=first.dtype, device=first.device)
        grad = torch.zeros_like(flat)
        offset = 0
        for (layer, attr), size in zip(params, sizes, strict=True):
            shape = getattr(layer, attr).shape
            view = nn.Parameter(flat[:, offset: offset + size].view(shape))
            view.grad = grad[:, offset: offset + size].view(shape)
            setattr(layer, attr, view)
            offset += size
        flat.grad = grad
        return flat

    def _parent(self, name: str) -> tuple[Any, str]:
        parent_name, _, attr = name.rpartition(".")
        return (self.model.get_submodule(parent_name) if parent_name else self.model), attr

    def remove(self) -> None:
        for name, layer in self.layers.items():
            parent, attr = self._parent(name)
            setattr(parent, attr, layer.base)
        self.layers = {}
        self.router.idx = None
        self.router.whole = False

    def set_adapter(self, i: int, weights: dict[str, tuple[Any, Any]], scale: float) -> None:
        import torch

        with torch.no_grad():
            for name, layer in self.layers.items():
                a, b = weights[name]
                layer.A[i].copy_(a)
                layer.B[i].copy_(b)
                layer.set_scale(i, scale)

    def get_adapter(self, i: int) -> dict[str, tuple[Any, Any]]:
        return {name: (layer.A[i].detach().cpu().clone(), layer.B[i].detach().cpu().clone())
                for name, layer in self.layers.items()}

    def route(self, adapter_ids: list[int] | None, on_device: Any = None) -> None:
        """Route row i to adapter adapter_ids[i] (None: base only); `on_device`: the same ids as a
        tensor on the model's device already (saves a copy)."""
        import torch

        dev = next(iter(self.layers.values())).A.device
        if adapter_ids is not None and on_device is None:
            on_device = torch.tensor(adapter_ids, device=dev)
        self.router.idx = on_device if adapter_ids is not None else None
        self.router.whole = adapter_ids is not None and list(adapter_ids) == list(range(self.n))


# --- init, save, load: peft's values and peft's format --------------------------------------------


def peft_init(model: Any, lora: LoraConfig, seed: int) -> dict[str, tuple[Any, Any]]:
    """The initial A, B that `train.attach_lora(model, lora, seed)` gives, keyed by module name."""
    peft_model = attach_lora(model, lora, seed)
    out = {}
    for name, mod in peft_model.named_modules():
        if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
            key = name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name
            out[key] = (mod.lora_A["default"].weight.detach().cpu().clone(),
                        mod.lora_B["default"].weight.detach().cpu().clone())
    peft_model.unload()
    return out


def fast_init(model: Any, lora: LoraConfig, seed: int) -> dict[str, tuple[Any, Any]]:
    """peft_init's values without building a PeftModel: the same generator calls in the same order.

    peft (0.15-0.21) seeds nothing itself; for each target module, in named_modules() order, it
    builds nn.Linear(in, r) and nn.Linear(r, out) (each constructor draws a kaiming-uniform
    weight), then redraws A kaiming-uniform and zeroes B, all on the CPU generator. train_many
    checks this against peft_init once per call and falls back to peft_init if they ever differ.
    """
    import math

    import torch

    seed_everything(seed)
    out = {}
    for name in target_names(model, lora.target_modules):
        m = model.get_submodule(name)
        a = torch.empty(lora.rank, m.in_features)
        b = torch.empty(m.out_features, lora.rank)
        torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        torch.nn.init.kaiming_uniform_(b, a=math.sqrt(5))
        torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        out[name] = (a, torch.zeros_like(b))
    return out


def initial_weights(model: Any, jobs: list[FitJob]) -> list[dict[str, tuple[Any, Any]]]:
    """Each job's initial adapter as peft makes it: fast_init, checked once against peft itself."""
    import torch

    if not jobs:
        return []
    ref = peft_init(model, jobs[0].lora, jobs[0].seed)
    fast = fast_init(model, jobs[0].lora, jobs[0].seed)
    if ref.keys() == fast.keys() and all(torch.equal(ref[k][0], fast[k][0]) and torch.equal(ref[k][1], fast[k][1])
                                         for k in ref):
        return [ref] + [fast_init(model, j.lora, j.seed) for j in jobs[1:]]
    log.warning("fast LoRA init differs from this peft version's: initialising through peft (slower)")
    return [ref] + [peft_init(model, j.lora, j.seed) for j in jobs[1:]]


def save_peft(weights: dict[str, tuple[Any, Any]], lora: LoraConfig, out_dir: str, base: str = "") -> None:
    """Write an adapter exactly as PeftModel.save_pretrained lays it out (config + safetensors)."""
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    tensors = {}
    for name, (a, b) in weights.items():
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = a.contiguous()
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = b.contiguous()
    save_file(tensors, os.path.join(out_dir, "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg = peft_config(lora)
    cfg.base_model_name_or_path = base or None
    cfg.save_pretrained(out_dir)


def load_peft(adapter_dir: str) -> tuple[dict[str, tuple[Any, Any]], float]:
    """(weights, scale) of a saved peft LoRA adapter."""
    from safetensors.torch import load_file

    with open(os.path.join(adapter_dir, "adapter_config.json")) as f:
        conf = json.load(f)
    tensors = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    names = {k[len(PEFT_PREFIX):].rsplit(".lora_", 1)[0] for k in tensors}
    weights = {n: (tensors[f"{PEFT_PREFIX}{n}.lora_A.weight"], tensors[f"{PEFT_PREFIX}{n}.lora_B.weight"])
               for n in names}
    return weights, conf["lora_alpha"] / conf["r"]


# --- memory: how many adapters at once --------------------------------------------------------------


def bytes_per_adapter(model: Any, lora: LoraConfig, tokens: int) -> int:
    """Rough peak memory one more adapter in the batch costs (adapter_bytes) for this model."""
    conf = model.config
    p = next(model.parameters())
    names = target_names(model, lora.target_modules)
    lora_params = sum(lora.rank * (m.in_features + m.out_features)
                      for m in (model.get_submodule(n) for n in names))
    return adapter_bytes(lora_params, conf.num_hidden_layers, conf.hidden_size, conf.intermediate_size,
                         conf.vocab_size, p.element_size(), lora.batch_size, tokens)


def adapter_bytes(lora_params: int, layers: int, hidden: int, intermediate: int, vocab: int, elem: int,
                  batch_size: int, tokens: int) -> int:
    """Rough peak memory one more adapter in the batch costs: its LoRA weights, gradients and two
    AdamW moments (4 fp32 copies), plus the activations its rows keep for backward and its logits.
    (Also what `seal plan --dry-run --gpu` prices, from config figures alone.)

    Activations per token and layer are about 20 hidden-size vectors (attention and MLP inputs,
    norms, residuals; the MLP's are 4 intermediate-size ones) in the model's dtype (`elem` bytes);
    the logits and their gradient are 2 fp32 vocab-size vectors per token. An estimate, not a
    bound: set `inner.memory_budget_mb` with some headroom.
    """
    per_token = layers * (20 * hidden + 4 * intermediate) * elem + 2 * 4 * vocab
    return 16 * lora_params + batch_size * tokens * per_token


# inner.memory_budget_mb=0: this share of the memory free when the fits start. The rest covers the
# estimate's error, the scoring that follows and, on a CPU, everything else the machine runs.
AUTO_BUDGET_SHARE = 0.5


def free_memory_bytes(device: Any) -> int:
    """Memory free now: on a GPU what the driver reports, on a CPU the kernel's MemAvailable."""
    if device.type == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")  # not Linux: free pages


def budget_bytes(model: Any, budget_mb: int) -> int:
    """inner.memory_budget_mb in bytes; 0 means AUTO_BUDGET_SHARE of the model's device's free memory."""
    if budget_mb > 0:
        return budget_mb * 2**20
    return int(AUTO_BUDGET_SHARE * free_memory_bytes(next(model.parameters()).device))


def choose_batch(model: Any, lora: LoraConfig, tokens: int, budget_mb: int, cap: int) -> int:
    """B: as many adapters as fit the memory budget (0: auto), at least 1, at most `cap`."""
    return max(1, min(cap, budget_bytes(model, budget_mb) // max(1, bytes_per_adapter(model, lora, tokens))))


# --- training -------------------------------------------------------------------------------------


def train_many(model: Any, tokenizer: Any, jobs: list[FitJob], max_length: int, pack: bool = True) -> list[FitResult]:
    """Fit len(jobs) adapters concurrently over `model` (left unchanged); same results as fitting
    each with `train.attach_lora` + `train.train` alone. Jobs must share `shape_key`.

    `pack`: run packed passes (rows end to end, no padding; see Packing) where the model allows
    them (`packing_works`), else padded rows with length-aware adapter picking."""
    import torch

    if not jobs:
        return []
    keys = {shape_key(j.lora) for j in jobs}
    if len(keys) > 1:
        raise ValueError(f"train_many needs one adapter shape per batch, got {sorted(keys)}")
    first = jobs[0].lora
    n = len(jobs)
    frozen = {p: p.requires_grad for p in model.parameters()}  # peft_init clears them: restore after
    inits = initial_weights(model, jobs)
    device = next(model.parameters()).device
    rows = []
    for j in jobs:
        enc = [encode(tokenizer, ex, max_length) for ex in j.examples]
        rows.append([r for r in enc if any(label != IGNORE for label in r[1])])
    plans = [schedule(len(r), j.lora, j.seed) for r, j in zip(rows, jobs, strict=True)]

    packed = pack and packing_works(model)
    attn_before = getattr(model.config, "_attn_implementation", None)
    for p in frozen:
        p.requires_grad_(False)
    multi = MultiLora(model, n, first.rank, first.target_modules, first.dropout, train=True)
    was_training = model.training
    try:
        if packed:
            model.set_attn_implementation(PACKED_ATTENTION)
        for i, (j, init) in enumerate(zip(jobs, inits, strict=True)):
            multi.set_adapter(i, init, j.lora.alpha / j.lora.rank)
        opt = _StackedAdamW(multi.flat, [j.lora for j in jobs])
        stats = [{"steps": 0, "first_loss": float("nan"), "last_loss": float("nan")} for _ in jobs]
        first = torch.full((n,), float("nan"), device=device)
        last = torch.full((n,), float("nan"), device=device)
        model.train()
        # The gradients are views of one flat tensor (MultiLora._flatten), which torch warns may be
        # slower; here it is what makes the optimizer fast.
        warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")
        pos = [0] * n  # each adapter's next step in its own schedule
        passes = tokens = padded = 0
        overhead = PASS_OVERHEAD_TOKENS["cuda" if device.type == "cuda" else "cpu"]
        while True:
            pending = {i: [rows[i][r] for r in plans[i][pos[i]]] for i in range(n) if pos[i] < len(plans[i])}
            if not pending:
                break
            # Packed passes compute no padding, so every adapter with a step left takes it.
            active = sorted(pending) if packed else pick_adapters(pending, overhead)
            batch_rows, owner = [], []
            for i in active:
                batch_rows.extend(pending[i])
                owner.extend([i] * len(pending[i]))
                pos[i] += 1
            passes += 1
            tokens += sum(len(ids) for ids, _ in batch_rows)
            owner_t = torch.tensor(owner, device=device)
            multi.route(owner, owner_t)
            if packed:
                losses = _packed_losses(model, multi, batch_rows, owner, n, device)
                padded += sum(len(ids) for ids, _ in batch_rows)
            else:
                batch = {k: v.to(device) for k, v in collate(batch_rows, tokenizer.pad_token_id).items()}
                padded += batch["input_ids"].numel()
                logits, targets, at = labelled_logits(model, batch["input_ids"], batch["attention_mask"],
                                                      batch["labels"])
                losses = _per_adapter_loss(logits, targets, owner_t[at], n)
            opt.zero_grad()
            losses[active].sum().backward()
            # pos[i] - 1 is the step adapter i just took: its lr share under its own schedule.
            opt.step(active, [lr_factor(pos[i] - 1, len(plans[i]), jobs[i].lora.lr_schedule) for i in active])
            # Losses stay on the device until the end: no host sync per pass.
            act = torch.tensor(active, device=device)
            done = losses.detach()[act]
            last.index_copy_(0, act, done)
            fresh = [k for k, i in enumerate(active) if stats[i]["steps"] == 0]
            if fresh:
                first.index_copy_(0, act[fresh], done[fresh])
            for i in active:
                stats[i]["steps"] += 1
        log.info("train_many: %d adapters, %d steps in %d %s passes, %d tokens computed as %d",
                 n, sum(len(p) for p in plans), passes, "packed" if packed else "padded", tokens, padded)
        for st, f, la in zip(stats, first.tolist(), last.tolist(), strict=True):
            if st["steps"]:
                st["first_loss"], st["last_loss"] = f, la
        results = [FitResult(weights=multi.get_adapter(i), stats=stats[i]) for i in range(n)]
    finally:
        multi.router.pack = None
        if packed:
            model.set_attn_implementation(attn_before)
        multi.remove()
        for p, flag in frozen.items():
            p.requires_grad_(flag)
        model.train(was_training)
    return results


# A forward/backward pass costs about this many padded tokens' worth of time on top of its tokens
# (kernel launches, Python, the frozen weights streamed once per pass): a CPU is compute-bound
# already at a few hundred tokens, a GPU only at many thousands. A heuristic for pick_adapters.
PASS_OVERHEAD_TOKENS = {"cpu": 256, "cuda": 16384}


def pick_adapters(pending: dict[int, list[tuple[list[int], list[int]]]], overhead: int) -> list[int]:
    """Which adapters take their next step in this pass. Rows of a pass are padded to its longest,
    and a self-edit's short lines and its long passage come in random order, so advancing every
    adapter every pass wastes most of a compute-bound device on padding. Any subset keeps each
    adapter's own step sequence (hence its result) unchanged; this picks the adapters with the
    shortest next batches, as many as maximise steps per (overhead + padded tokens). Adapters
    held back take their step in a later pass, with others of their length."""
    by_len = sorted(pending, key=lambda i: max(len(ids) for ids, _ in pending[i]))
    best, best_rate, rows = 1, 0.0, 0
    for count, i in enumerate(by_len, start=1):
        rows += len(pending[i])
        width = max(len(ids) for ids, _ in pending[i])
        rate = count / (overhead + rows * width)
        if rate > best_rate:
            best, best_rate = count, rate
    return sorted(by_len[:best])


def _packed_losses(model: Any, multi: MultiLora, rows: list[tuple[list[int], list[int]]], owner: list[int],
                   n: int, device: Any) -> Any:
    """[n] losses of one packed pass (see _per_adapter_loss): rows end to end as one row, labels
    shifted within each row, and (as train.labelled_logits does) the LM head run only at the
    positions whose shifted label counts; each one's loss summed into its row's adapter."""
    import torch

    lengths = [len(ids) for ids, _ in rows]
    pack = Packing(lengths, device)
    # (packed position, target, adapter) of every position whose shifted label counts
    counted = [(k, t, i) for k, (t, i) in enumerate((t, i) for (_, lab), i in zip(rows, owner, strict=True)
                                                     for t in lab[1:] + [IGNORE]) if t != IGNORE]
    at, targets, tok_owner = (torch.tensor([c[j] for c in counted], dtype=torch.long, device=device)
                              for j in range(3))
    gather = _index_fns()["gather"]

    def only_labelled(module: Any, args: tuple) -> tuple:  # a gather whose backward is a copy
        return (gather(args[0].squeeze(0), at).unsqueeze(0), *args[1:])

    handle = model.get_output_embeddings().register_forward_pre_hook(only_labelled)
    multi.router.pack = pack
    try:
        logits = _packed_forward(model, pack, [ids for ids, _ in rows])
    finally:
        handle.remove()
    return _per_adapter_loss(logits, targets, tok_owner, n)


def _per_adapter_loss(logits: Any, targets: Any, owner: Any, n: int) -> Any:
    """[n] losses: each adapter's token-mean cross-entropy over its own labelled positions
    (train.labelled_logits: logits [K, vocab], targets [K], owner [K]; logits upcast to fp32)."""
    import torch
    import torch.nn.functional as F

    tok = F.cross_entropy(logits.float(), targets, reduction="none")
    sums = torch.zeros(n, device=logits.device).index_add(0, owner, tok)
    counts = torch.zeros(n, device=logits.device).index_add(0, owner, torch.ones_like(tok))
    return sums / counts.clamp(min=1)


# _StackedAdamW steps with torch's fused AdamW kernel where the device has one; tests set this to
# False to check the multi-tensor fallback too.
FUSED_ADAMW = True


def _has_fused_adamw(like: Any) -> bool:
    """Whether torch has a fused AdamW kernel for tensors like `like` (device and dtype): one step
    on a one-element tensor."""
    import torch

    try:
        z = [like.new_zeros(1) for _ in range(4)]
        torch._fused_adamw_(z[:1], z[1:2], z[2:3], z[3:], [], [like.new_ones(())], lr=0.0, beta1=BETA1, beta2=BETA2,
                            weight_decay=0.0, eps=EPS, amsgrad=False, maximize=False)
        return True
    except (AttributeError, RuntimeError, NotImplementedError) as e:
        log.info("no fused AdamW kernel for %s %s (%s): multi-tensor steps", like.device, like.dtype, e)
        return False


class _StackedAdamW:
    """torch.optim.AdamW's update (no amsgrad) for n adapters whose parameters are the rows of one
    [n, P] tensor (`MultiLora.flat`, its gradient in `.grad`): lr, weight decay and step count are
    per adapter; adapters not in `active` stay put. `lr_scale` multiplies each active adapter's lr
    for this step (a learning-rate schedule: one factor for all, or one per active adapter),
    applied as torch.optim.AdamW applies a scheduler's lr (weight decay uses the scheduled lr too).

    The step is torch's fused AdamW kernel (one pass over the memory; what
    `torch.optim.AdamW(fused=True)` runs) on the active adapters' rows, one call per (lr, weight
    decay) they share, usually one. Where the device has no fused kernel (or FUSED_ADAMW is off),
    the same update in multi-tensor operators over the whole tensor, with per-adapter factors as
    [n, 1] tensors: an inactive adapter gets weight-decay factor 1, first-moment weight 0,
    second-moment factor 1 and step size 0, and its gradient is exactly zero (its rows were not
    in the pass), so it does not move."""

    def __init__(self, flat: Any, loras: list[LoraConfig]):
        import torch

        self.flat = flat
        self.n = len(loras)
        self.lr = [lo.lr for lo in loras]
        self.wd = [lo.weight_decay for lo in loras]
        self.m = torch.zeros_like(flat)
        self.v = torch.zeros_like(flat)
        self.step_count = torch.zeros(self.n, dtype=torch.float64)  # the fallback's
        self.steps = [torch.zeros((), device=flat.device) for _ in loras]  # the fused kernel's
        self.fused = FUSED_ADAMW and _has_fused_adamw(flat)

    def zero_grad(self) -> None:
        self.flat.grad.zero_()

    def step(self, active: list[int], lr_scale: float | list[float] | None = None) -> None:
        """One AdamW step of the active adapters; lr_scale: each one's share of its lr this step
        (train.lr_factor; one float for all, or one per active adapter), as a scheduler would set
        it on torch's AdamW."""
        if not active:
            return
        scales = [1.0] * len(active) if lr_scale is None else (
            [float(lr_scale)] * len(active) if isinstance(lr_scale, (int, float)) else [float(f) for f in lr_scale])
        (self._fused if self.fused else self._foreach)(active, scales)

    def _fused(self, active: list[int], scales: list[float]) -> None:
        import torch

        groups: dict[tuple[float, float], list[int]] = {}
        for i, f in zip(active, scales, strict=True):
            groups.setdefault((self.lr[i] * f, self.wd[i]), []).append(i)
        torch._foreach_add_([self.steps[i] for i in active], 1.0)
        grad = self.flat.grad
        for (lr, wd), rows in groups.items():
            torch._fused_adamw_([self.flat[i] for i in rows], [grad[i] for i in rows], [self.m[i] for i in rows],
                                [self.v[i] for i in rows], [], [self.steps[i] for i in rows], lr=lr, beta1=BETA1,
                                beta2=BETA2, weight_decay=wd, eps=EPS, amsgrad=False, maximize=False)

    def _foreach(self, active: list[int], scales: list[float]) -> None:
        import torch

        on = torch.zeros(self.n, dtype=torch.bool)
        on[active] = True
        self.step_count[on] += 1
        lr = torch.tensor(self.lr, dtype=torch.float64)
        lr[active] *= torch.tensor(scales, dtype=torch.float64)
        wd = torch.tensor(self.wd, dtype=torch.float64)
        t = self.step_count.clamp(min=1)
        # The scalars torch computes in Python floats (float64), then applies in the param dtype.
        # Inactive adapters: decay 1, moment weights that leave m and v as they are, step size 0.
        zero, one = torch.zeros((), dtype=torch.float64), torch.ones((), dtype=torch.float64)
        decay = torch.where(on, 1 - lr * wd, one)
        w1 = torch.where(on, torch.full_like(lr, 1 - BETA1), zero)
        b2 = torch.where(on, torch.full_like(lr, BETA2), one)
        step_size = torch.where(on, lr / (1 - BETA1 ** t), zero)
        bc2_sqrt = (1 - BETA2 ** t).sqrt()
        p, g, m, v = self.flat, self.flat.grad, self.m, self.v
        # one host->device copy for all five factors, each [n, 1]
        decay, w1, b2, step_size, bc2_sqrt = torch.stack([decay, w1, b2, step_size, bc2_sqrt]).to(
            device=p.device, dtype=p.dtype).unsqueeze(-1)
        with torch.no_grad():
            p.mul_(decay)
            m.lerp_(g, w1)
            v.mul_(b2).addcmul_(g, g, value=1 - BETA2)
            denom = (v.sqrt() / bc2_sqrt).add_(EPS)
            p.sub_(m / denom * step_size)


# --- training all jobs, B at a time ----------------------------------------------------------------

# fit_jobs runs packed passes where the model allows them; bench/inner_loop.py turns this off for
# its padded-passes arm, to measure what packing gains in the same run.
PACKED_PASSES = True


def fit_jobs(model: Any, tokenizer: Any, jobs: list[FitJob], inner: Any,
             max_length: int) -> tuple[list[FitResult], list[float]]:
    """Every job's adapter, B at a time (grouped by adapter shape; B from inner.memory_budget_mb,
    at most inner.max_batch), and each job's share of its batch's seconds."""
    results: list[Any] = [None] * len(jobs)
    seconds = [0.0] * len(jobs)
    groups: dict[tuple, list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(shape_key(job.lora), []).append(i)
    for members in groups.values():
        lora = jobs[members[0]].lora
        tokens = max(len(encode(tokenizer, ex, max_length)[0]) for i in members for ex in jobs[i].examples)
        b = choose_batch(model, lora, tokens, inner.memory_budget_mb, inner.max_batch)
        log.info("batched inner loop: %d fits of rank %d in batches of %d", len(members), lora.rank, b)
        for start in range(0, len(members), b):
            chunk = members[start: start + b]
            t0 = time.perf_counter()
            out = train_many(model, tokenizer, [jobs[i] for i in chunk], max_length, pack=PACKED_PASSES)
            share = (time.perf_counter() - t0) / len(chunk)
            for i, res in zip(chunk, out, strict=True):
                results[i], seconds[i] = res, share
    if next(model.parameters()).device.type == "cuda":
        import torch

        torch.cuda.empty_cache()  # hand the fits' activations back, for a vLLM engine started next
    return results, seconds
