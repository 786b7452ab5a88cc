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
- AdamW runs per adapter (its own lr, weight decay and step count), vectorised over the stack,
  with exactly torch.optim.AdamW's update rule; adapters without a batch this step do not move.

`tests/integration/test_multilora.py` checks adapters, losses and answers against the sequential
path.
Adapters are written in peft's on-disk format, so peft and vLLM load them like any other.
"""

from __future__ import annotations

import json
import logging
import os
import time
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
    """Per-row adapter indices, shared by every MultiLoraLinear of a model (None: base only)."""

    def __init__(self) -> None:
        self.idx: Any = None


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

        def forward(self, x):
            y = self.base(x)
            idx = self.router.idx
            if idx is None:
                return y
            xa = x.to(self.A.dtype)
            if self.dropout and self.training:
                xa = torch.nn.functional.dropout(xa, self.dropout)
            a, b = self.A[idx], self.B[idx]  # [N, r, in], [N, out, r]: gathered per row
            shape = xa.shape
            h = torch.bmm(xa.reshape(shape[0], -1, shape[-1]), a.transpose(1, 2))
            delta = torch.bmm(h, b.transpose(1, 2)) * self.scale[idx].view(-1, 1, 1)
            return (y + delta.reshape(*shape[:-1], -1)).to(y.dtype)

    return MultiLoraLinear


def target_names(model: Any, targets: list[str] | tuple[str, ...]) -> list[str]:
    """Linear modules peft would wrap: the name, or its last component, is a target."""
    from torch import nn

    return [
        name for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear) and (name in targets or name.rsplit(".", 1)[-1] in targets)
    ]


class MultiLora:
    """Installs B routed adapters into a model in place; `remove()` puts the plain layers back."""

    def __init__(self, model: Any, n: int, rank: int, targets: list[str] | tuple[str, ...], dropout: float = 0.0):
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

    def _parent(self, name: str) -> tuple[Any, str]:
        parent_name, _, attr = name.rpartition(".")
        return (self.model.get_submodule(parent_name) if parent_name else self.model), attr

    def remove(self) -> None:
        for name, layer in self.layers.items():
            parent, attr = self._parent(name)
            setattr(parent, attr, layer.base)
        self.layers = {}
        self.router.idx = None

    def set_adapter(self, i: int, weights: dict[str, tuple[Any, Any]], scale: float) -> None:
        import torch

        with torch.no_grad():
            for name, layer in self.layers.items():
                a, b = weights[name]
                layer.A[i].copy_(a)
                layer.B[i].copy_(b)
                layer.scale[i] = scale

    def get_adapter(self, i: int) -> dict[str, tuple[Any, Any]]:
        return {name: (layer.A[i].detach().cpu().clone(), layer.B[i].detach().cpu().clone())
                for name, layer in self.layers.items()}

    def route(self, adapter_ids: list[int] | None) -> None:
        import torch

        dev = next(iter(self.layers.values())).A.device
        self.router.idx = None if adapter_ids is None else torch.tensor(adapter_ids, device=dev)

    def parameters(self) -> list[Any]:
        return [p for layer in self.layers.values() for p in (layer.A, layer.B)]


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


def train_many(model: Any, tokenizer: Any, jobs: list[FitJob], max_length: int) -> list[FitResult]:
    """Fit len(jobs) adapters concurrently over `model` (left unchanged); same results as fitting
    each with `train.attach_lora` + `train.train` alone. Jobs must share `shape_key`."""
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

    for p in frozen:
        p.requires_grad_(False)
    multi = MultiLora(model, n, first.rank, first.target_modules, first.dropout)
    was_training = model.training
    try:
        for i, (j, init) in enumerate(zip(jobs, inits, strict=True)):
            multi.set_adapter(i, init, j.lora.alpha / j.lora.rank)
        opt = _StackedAdamW(multi.parameters(), [j.lora for j in jobs], device)
        stats = [{"steps": 0, "first_loss": float("nan"), "last_loss": float("nan")} for _ in jobs]
        model.train()
        pos = [0] * n  # each adapter's next step in its own schedule
        passes = tokens = padded = 0
        overhead = PASS_OVERHEAD_TOKENS["cuda" if device.type == "cuda" else "cpu"]
        while True:
            pending = {i: [rows[i][r] for r in plans[i][pos[i]]] for i in range(n) if pos[i] < len(plans[i])}
            if not pending:
                break
            active = pick_adapters(pending, overhead)
            batch_rows, owner = [], []
            for i in active:
                batch_rows.extend(pending[i])
                owner.extend([i] * len(pending[i]))
                pos[i] += 1
            batch = {k: v.to(device) for k, v in collate(batch_rows, tokenizer.pad_token_id).items()}
            passes += 1
            tokens += sum(len(ids) for ids, _ in batch_rows)
            padded += batch["input_ids"].numel()
            multi.route(owner)
            logits, targets, at = labelled_logits(model, batch["input_ids"], batch["attention_mask"],
                                                  batch["labels"])
            losses = _per_adapter_loss(logits, targets, torch.tensor(owner, device=device)[at], n)
            opt.zero_grad()
            losses[active].sum().backward()
            # pos[i] - 1 is the step adapter i just took: its lr share under its own schedule.
            opt.step(active, [lr_factor(pos[i] - 1, len(plans[i]), jobs[i].lora.lr_schedule) for i in active])
            values = losses.detach().tolist()  # one device sync per pass, not one per adapter
            for i in active:
                value = values[i]
                st = stats[i]
                if st["steps"] == 0:
                    st["first_loss"] = value
                st["last_loss"] = value
                st["steps"] += 1
        log.info("train_many: %d adapters, %d steps in %d passes, %d tokens padded to %d",
                 n, sum(len(p) for p in plans), passes, tokens, padded)
        results = [FitResult(weights=multi.get_adapter(i), stats=stats[i]) for i in range(n)]
    finally:
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


def _per_adapter_loss(logits: Any, targets: Any, owner: Any, n: int) -> Any:
    """[n] losses: each adapter's token-mean cross-entropy over its own labelled positions
    (train.labelled_logits: logits [K, vocab], targets [K], owner [K]; logits upcast to fp32)."""
    import torch
    import torch.nn.functional as F

    tok = F.cross_entropy(logits.float(), targets, reduction="none")
    sums = torch.zeros(n, device=logits.device).index_add(0, owner, tok)
    counts = torch.zeros(n, device=logits.device).index_add(0, owner, torch.ones_like(tok))
    return sums / counts.clamp(min=1)


class _StackedAdamW:
    """torch.optim.AdamW's update (single-tensor path, no amsgrad), per adapter along dim 0 of each
    stacked parameter: lr, weight decay and step count are per adapter; inactive ones stay put."""

    def __init__(self, params: list[Any], loras: list[LoraConfig], device: Any):
        import torch

        self.params = params
        self.lr = torch.tensor([lo.lr for lo in loras], dtype=torch.float64)
        self.wd = torch.tensor([lo.weight_decay for lo in loras], dtype=torch.float64)
        self.step_count = torch.zeros(len(loras), dtype=torch.float64)
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.device = device

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self, active: list[int], lr_scale: list[float] | None = None) -> None:
        """One AdamW step of the active adapters; lr_scale: each one's share of its lr this step
        (train.lr_factor), as a scheduler would set it on torch's AdamW."""
        import torch

        everyone = len(active) == len(self.lr)
        idx = torch.tensor(active, device=self.device)
        self.step_count[active] += 1
        t = self.step_count[active]
        lr, wd = self.lr[active], self.wd[active]
        if lr_scale is not None:
            lr = lr * torch.tensor(lr_scale, dtype=torch.float64)
        # The scalars torch computes in Python floats (float64), then applies in the param dtype.
        decay = (1 - lr * wd)
        step_size = lr / (1 - BETA1 ** t)
        bc2_sqrt = (1 - BETA2 ** t).sqrt()
        with torch.no_grad():
            for p, m, v in zip(self.params, self.m, self.v, strict=True):
                if p.grad is None:
                    continue
                view = (-1,) + (1,) * (p.dim() - 1)
                dt = dict(device=p.device, dtype=p.dtype)
                if everyone:  # the common case: the same arithmetic in place, without the copies
                    g = p.grad
                    p.mul_(decay.to(**dt).view(view))
                    m.lerp_(g, 1 - BETA1)
                    v.mul_(BETA2).addcmul_(g, g, value=1 - BETA2)
                    denom = (v.sqrt() / bc2_sqrt.to(**dt).view(view)).add_(EPS)
                    p.sub_(step_size.to(**dt).view(view) * m / denom)
                    continue
                g = p.grad[idx]
                pa = p[idx] * decay.to(**dt).view(view)
                ma = m[idx].lerp(g, 1 - BETA1)
                va = v[idx].mul(BETA2).addcmul(g, g, value=1 - BETA2)
                denom = (va.sqrt() / bc2_sqrt.to(**dt).view(view)).add(EPS)
                pa = pa - step_size.to(**dt).view(view) * ma / denom
                p.index_copy_(0, idx, pa)
                m.index_copy_(0, idx, ma)
                v.index_copy_(0, idx, va)


# --- training all jobs, B at a time ----------------------------------------------------------------


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
            out = train_many(model, tokenizer, [jobs[i] for i in chunk], max_length)
            share = (time.perf_counter() - t0) / len(chunk)
            for i, res in zip(chunk, out, strict=True):
                results[i], seconds[i] = res, share
    if next(model.parameters()).device.type == "cuda":
        import torch

        torch.cuda.empty_cache()  # hand the fits' activations back, for a vLLM engine started next
    return results, seconds
