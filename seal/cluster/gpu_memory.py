"""`seal plan --dry-run --gpu TYPE`: what one GPU pod holds in GPU memory for a run config, before
anything is submitted, and which GPU types the config fits.

An adapt pod (the largest; the sample pod holds the same minus the trainer, the improve pod the
base and one M-step adapter) holds, on one GPU:

- the base weights, loaded by transformers for the LoRA fits (parameters x dtype bytes);
- vLLM's share: `sampling.vllm_memory` of the GPU's memory, reserved up front by the engine for
  its own copy of the weights, its LoRA slots (`vllm_max_loras` adapters of the largest rank over
  every linear projection) and the KV cache, which must hold at least one sequence of the
  engine's max_model_len (model.max_length plus the longest generation), or vLLM will not start;
- the CUDA context and allocator reserve (a fixed allowance);
- the batched trainer: B adapters at once, each costing seal.inner.multilora.adapter_bytes (its
  weights, gradients and AdamW moments, its rows' activations and logits), B chosen as the trainer
  chooses it (half the memory left, at most inner.max_batch, at least 1).

From round 1 on, sampling with vLLM serves the base with the previous policy merged in, saved to
/tmp once per pod (seal.generation.vllm_backend.model_dir): a full copy of the weights on the
pod's disk, not in GPU memory.

Architectures come from a model folder's config.json, or for hub names from KNOWN_MODELS (their
published config.json figures); the estimate needs no download.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from seal.config import RunConfig
from seal.errors import ConfigError
from seal.inner.multilora import AUTO_BUDGET_SHARE, adapter_bytes
from seal.models.tiny import parse_tiny_spec

GIB = 2**30


@dataclass(frozen=True)
class Arch:
    """The figures of a decoder-only transformer the estimate needs (config.json's names)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tie_word_embeddings: bool
    qkv_bias: bool = False  # Qwen2 has biases on q, k and v

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each projection of one layer (Llama/Qwen2 layout)."""
        h, i, kv = self.hidden_size, self.intermediate_size, self.num_key_value_heads * self.head_dim
        return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def parameters(self) -> int:
        shapes = self.linear_shapes()
        per_layer = sum(a * b for a, b in shapes.values()) + 2 * self.hidden_size
        if self.qkv_bias:
            per_layer += sum(shapes[m][1] for m in ("q_proj", "k_proj", "v_proj"))
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return self.num_hidden_layers * per_layer + embeddings + self.hidden_size

    def lora_parameters(self, rank: int, modules: list[str]) -> int:
        shapes = self.linear_shapes()
        unknown = [m for m in modules if m not in shapes]
        if unknown:
            raise ConfigError(f"target_modules {unknown}: the memory plan knows {', '.join(shapes)}")
        return self.num_hidden_layers * sum(rank * sum(shapes[m]) for m in modules)


# config.json figures of the models the shipped configs use.
KNOWN_MODELS = {
    "Qwen/Qwen2.5-7B": Arch(3584, 18944, 28, 28, 4, 152064, False, True),
    "Qwen/Qwen2.5-7B-Instruct": Arch(3584, 18944, 28, 28, 4, 152064, False, True),
    "meta-llama/Llama-3.2-1B": Arch(2048, 8192, 16, 32, 8, 128256, True),
    "meta-llama/Llama-3.2-1B-Instruct": Arch(2048, 8192, 16, 32, 8, 128256, True),
}

# GPU types by the name --gpu takes: memory in GiB as the driver reports it (nvidia-smi's MiB / 1024)
# and the node label value of NVIDIA's GPU feature discovery (nvidia.com/gpu.product).
GPUS = {
    "l4-24gb": (22.5, "NVIDIA-L4"),
    "a100-40gb": (40.0, "NVIDIA-A100-SXM4-40GB"),
    "l40s-48gb": (45.0, "NVIDIA-L40S"),
    "a100-80gb": (80.0, "NVIDIA-A100-SXM4-80GB"),
    "h100-80gb": (79.6, "NVIDIA-H100-80GB-HBM3"),
    "h200-141gb": (140.4, "NVIDIA-H200"),
}

CUDA_RESERVE = 1.5 * GIB  # CUDA context, cuBLAS workspaces, allocator fragmentation
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}  # auto is bfloat16 on a GPU
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def model_arch(spec: str) -> Arch:
    """The architecture of model.base: a local folder's config.json, or a known hub name."""
    path = Path(spec) / "config.json"
    if path.is_file():
        conf = json.loads(path.read_text())
        try:
            return Arch(conf["hidden_size"], conf["intermediate_size"], conf["num_hidden_layers"],
                        conf["num_attention_heads"], conf.get("num_key_value_heads", conf["num_attention_heads"]),
                        conf["vocab_size"], bool(conf.get("tie_word_embeddings", False)),
                        conf.get("model_type") == "qwen2" or bool(conf.get("attention_bias", False)))
        except KeyError as e:
            raise ConfigError(f"{path}: no {e.args[0]}: not a decoder config the memory plan knows") from None
    if spec in KNOWN_MODELS:
        return KNOWN_MODELS[spec]
    if spec.startswith("tiny:"):  # seal.models.tiny's layout
        t = parse_tiny_spec(spec)
        heads = t["hidden"] // 32
        return Arch(t["hidden"], 2 * t["hidden"], t["layers"], heads, max(1, heads // 2) if heads % 2 == 0 else heads,
                    t["vocab"], True, True)
    raise ConfigError(f"--gpu: no architecture figures for model.base {spec!r}: point model.base at a local "
                      f"folder holding its config.json, or use one of {', '.join(KNOWN_MODELS)}")


def gpu_memory(name: str) -> tuple[str, float]:
    """(label, GiB) of --gpu: a type from GPUS, or a size such as 48 or 48GiB."""
    key = name.lower()
    if key in GPUS:
        return key, GPUS[key][0]
    number = key.removesuffix("gib").removesuffix("gb")
    try:
        gib = float(number)
    except ValueError:
        raise ConfigError(f"--gpu {name}: not a GPU type ({', '.join(GPUS)}) or a size in GiB (e.g. 48)") from None
    if gib <= 0:
        raise ConfigError(f"--gpu {name}: the size must be positive")
    return f"{gib:g} GiB", gib


@dataclass
class PodPlan:
    """One adapt pod's GPU memory, in bytes, on a GPU of `total` bytes."""

    total: float
    weights: float
    vllm_share: float
    vllm_lora: float
    kv_room: float
    kv_needed: float
    reserve: float
    per_adapter: float
    batch: int
    improve_adapter: float
    merged_disk: float

    @property
    def used(self) -> float:
        return self.weights + self.vllm_share + self.reserve + self.batch * self.per_adapter

    def problems(self) -> list[str]:
        out = []
        if self.kv_room < self.kv_needed:
            out.append(f"vLLM's share leaves {self.kv_room / GIB:.1f} GiB for the KV cache, below the "
                       f"{self.kv_needed / GIB:.1f} GiB of one sequence: raise sampling.vllm_memory")
        improve = self.weights + self.improve_adapter + self.reserve
        if improve > self.total:
            out.append(f"the improve pod needs {improve / GIB:.1f} GiB: lower mstep.rank or model.max_length")
        if self.used > self.total:
            out.append(f"needs {self.used / GIB:.1f} GiB with one adapter at a time: lower sampling.vllm_memory, "
                       "model.max_length or the LoRA rank, or take a larger GPU")
        return out


def plan(cfg: RunConfig, gib: float, row_tokens: int | None = None) -> PodPlan:
    """The adapt pod's memory on a GPU of `gib` GiB (rows of `row_tokens`, default model.max_length)."""
    arch = model_arch(cfg.model.base)
    elem = DTYPE_BYTES[cfg.model.dtype]
    total = gib * GIB
    weights = arch.parameters() * elem
    vllm = cfg.sampling.backend != "transformers"
    share = cfg.sampling.vllm_memory * total if vllm else 0.0
    rank = cfg.sampling.vllm_max_lora_rank or max(cfg.inner.rank, cfg.mstep.rank)
    slot_rank = next((r for r in VLLM_LORA_RANKS if r >= rank), VLLM_LORA_RANKS[-1])
    lora = cfg.sampling.vllm_max_loras * arch.lora_parameters(slot_rank, list(arch.linear_shapes())) * elem
    kv_per_token = 2 * arch.num_hidden_layers * arch.num_key_value_heads * arch.head_dim * elem
    max_model_len = cfg.model.max_length + max(cfg.sampling.max_new_tokens, cfg.task.answer_tokens)
    kv_room = share - weights - lora if vllm else math.inf
    kv_needed = kv_per_token * max_model_len if vllm else 0.0
    tokens = row_tokens or cfg.model.max_length

    def trainer(lora_cfg) -> float:
        return adapter_bytes(arch.lora_parameters(lora_cfg.rank, lora_cfg.target_modules), arch.num_hidden_layers,
                             arch.hidden_size, arch.intermediate_size, arch.vocab_size, elem,
                             lora_cfg.batch_size, tokens)

    per_adapter = trainer(cfg.inner)
    free = total - weights - share - CUDA_RESERVE
    budget = cfg.inner.memory_budget_mb * 2**20 if cfg.inner.memory_budget_mb else AUTO_BUDGET_SHARE * max(free, 0)
    batch = 1 if not cfg.inner.batched else max(1, min(cfg.inner.max_batch, int(budget // per_adapter)))
    return PodPlan(total, weights, share, lora, kv_room, kv_needed, CUDA_RESERVE, per_adapter, batch,
                   trainer(cfg.mstep), weights)


def report(cfg: RunConfig, gpu: str, row_tokens: int | None = None) -> str:
    """The text `seal plan --dry-run --gpu` appends: the pod's memory on `gpu`, then every GPU type."""
    label, gib = gpu_memory(gpu)
    arch = model_arch(cfg.model.base)
    p = plan(cfg, gib, row_tokens)
    g = lambda b: f"{b / GIB:6.1f}"  # noqa: E731
    tokens = row_tokens or cfg.model.max_length
    dtype = cfg.model.dtype if cfg.model.dtype != "auto" else "bfloat16"
    longest = max(cfg.sampling.max_new_tokens, cfg.task.answer_tokens)
    rows = [f"GPU memory of an adapt pod on {label} ({gib:g} GiB): {cfg.model.base}, "
            f"{arch.parameters() / 1e9:.2f} B parameters in {dtype}",
            f"  {g(p.weights)} GiB  base weights (transformers, for the LoRA fits)"]
    if p.vllm_share:
        rows.append(f"  {g(p.vllm_share)} GiB  vLLM's share (sampling.vllm_memory {cfg.sampling.vllm_memory:g}): "
                    f"its weights {p.weights / GIB:.1f}, LoRA slots {p.vllm_lora / GIB:.1f}, KV cache "
                    f"{max(p.kv_room, 0) / GIB:.1f} (one {cfg.model.max_length}+{longest}-token sequence needs "
                    f"{p.kv_needed / GIB:.2f})")
    rows += [f"  {g(p.reserve)} GiB  CUDA context and allocator reserve",
             f"  {g(p.batch * p.per_adapter)} GiB  batched trainer: B={p.batch} adapters x "
             f"{p.per_adapter / GIB:.2f} GiB (r={cfg.inner.rank} on {', '.join(cfg.inner.target_modules)}, AdamW, "
             f"rows of {tokens} tokens)",
             f"  {g(p.used)} GiB  total of {gib:g}: " + ("fits" if not p.problems() else "does not fit: " + "; ".join(
                 p.problems())),
             f"  improve pod: base {p.weights / GIB:.1f} + M-step adapter and activations {p.improve_adapter / GIB:.1f}"
             f" + reserve {p.reserve / GIB:.1f} = {(p.weights + p.improve_adapter + p.reserve) / GIB:.1f} GiB",
             f"  /tmp from round 1: the merged policy for vLLM, {p.merged_disk / GIB:.1f} GiB on the pod's disk "
             "(workflows/restem.yaml gives /tmp 20Gi)"]
    if p.problems():
        rows.append("  " + suggestion(cfg, gib, p))
    product = node_selector(gpu)
    if product:
        rows.append(f"  node selector: -p adapt-node-selector='{{\"nvidia.com/gpu.product\": \"{product}\"}}'")
    fits, not_fit = [], []
    for name, (size, _) in GPUS.items():
        other = plan(cfg, size, row_tokens)
        (not_fit if other.problems() else fits).append(f"{name} (B={other.batch})" if not other.problems() else name)
    rows.append(f"fits on: {', '.join(fits) or 'none of ' + ', '.join(GPUS)}"
                + (f"; not on: {', '.join(not_fit)}" if not_fit else ""))
    return "\n".join(rows)


def suggestion(cfg: RunConfig, gib: float, p: PodPlan) -> str:
    """What would make the config fit this GPU: the smallest vLLM share that still starts the
    engine, and the longest training rows that then leave room for one adapter."""
    arch = model_arch(cfg.model.base)
    elem = DTYPE_BYTES[cfg.model.dtype]
    total = gib * GIB
    share = math.ceil(100 * (p.weights + p.vllm_lora + p.kv_needed) / total) / 100 if p.vllm_share else 0.0
    per_token = adapter_bytes(0, arch.num_hidden_layers, arch.hidden_size, arch.intermediate_size,
                              arch.vocab_size, elem, cfg.inner.batch_size, 1)
    fixed = adapter_bytes(arch.lora_parameters(cfg.inner.rank, cfg.inner.target_modules), 0, 0, 0, 0, elem, 0, 0)
    room = total - p.weights - share * total - p.reserve - fixed
    tokens = int(room // per_token) if room > 0 else 0
    if share > 1 or tokens < 64:
        return "no setting of sampling.vllm_memory and row length fits it: take a larger GPU"
    return (f"to fit: --set sampling.vllm_memory={share:g} (the least that starts vLLM) with training rows "
            f"of at most {tokens} tokens (model.max_length, or check your data's with --row-tokens)")


def node_selector(gpu: str) -> str | None:
    """The node label value of a known GPU type, for {stage}-node-selector."""
    entry = GPUS.get(gpu.lower())
    return entry[1] if entry else None
