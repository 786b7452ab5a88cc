"""Loading causal LMs (local folder, s3:// prefix, hub name, or a tiny model built on the fly).

torch and transformers are imported inside the functions so that `seal --help`, config checks and
the store work without them loaded, and so GPU-only code paths never run at import time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seal.errors import ConfigError

log = logging.getLogger(__name__)

EOS = "<|endoftext|>"
TINY_PREFIX = "tiny:"


def cache_dir() -> Path:
    """Where built tiny models and models copied from s3:// live (SEAL_CACHE or ~/.cache/seal)."""
    return Path(os.environ.get("SEAL_CACHE", Path.home() / ".cache" / "seal"))


@dataclass(frozen=True)
class Placement:
    """Device and dtype chosen at run time."""

    device: str
    dtype: Any  # a torch.dtype


def choose_placement(device: str = "auto", dtype: str = "auto") -> Placement:
    """cuda/bf16 when a GPU is present, else cpu/float32; explicit settings win."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("model.device is 'cuda' but no GPU is visible: use model.device=auto")
    if dtype == "auto":
        # bf16 halves memory and runs on tensor cores; CPU matmuls in bf16 are slow and lossy.
        dtype = "bfloat16" if device == "cuda" else "float32"
    return Placement(device=device, dtype=getattr(torch, dtype))


def parse_tiny_spec(spec: str) -> dict[str, int]:
    """'tiny:hidden=256,layers=4,seed=0' -> {'hidden': 256, 'layers': 4, 'seed': 0}."""
    allowed = {"hidden": 256, "layers": 4, "seed": 0, "vocab": 2048}
    body = spec[len(TINY_PREFIX):]
    out = dict(allowed)
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        if key not in allowed or not value.isdigit():
            raise ConfigError(
                f"model.base '{spec}': '{item}' is not one of {', '.join(k + '=N' for k in allowed)}"
            )
        out[key] = int(value)
    return out


def default_corpus() -> list[str]:
    """Text the tiny tokenizer is trained on: the bundled passages and seal's prompt templates."""
    from seal.tasks import knowledge

    texts = []
    for rec in knowledge.load_records("builtin:squad-sample"):
        texts.append(rec["context"])
        texts.extend(q["question"] + " " + q["answer"] for q in rec["questions"])
    texts.extend(knowledge.PROMPTS.values())
    return texts


def build_tiny_model(
    out: str | Path,
    hidden: int = 256,
    layers: int = 4,
    seed: int = 0,
    vocab: int = 2048,
    corpus: list[str] | None = None,
    replace: bool = True,
) -> Path:
    """Write a random Qwen2-style model and a byte-level BPE tokenizer trained on `corpus`.

    Heads are sized so head_dim is 32 or more: vLLM's CPU attention kernels refuse smaller heads.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    if hidden < 64 or hidden % 32:
        raise ConfigError(f"tiny model hidden={hidden}: use a multiple of 32, at least 64")
    out = Path(out)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus if corpus is not None else default_corpus(), trainer)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)

    heads = hidden // 32
    config = Qwen2Config(
        vocab_size=len(hf_tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2) if heads % 2 == 0 else heads,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    # Write into a temp folder then rename, so a killed build never leaves a half model behind.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    model.save_pretrained(tmp)
    hf_tok.save_pretrained(tmp)
    _publish(tmp, out, replace=replace)
    return out


def _publish(tmp: Path, out: Path, replace: bool) -> None:
    """Rename a finished temp folder into place. Without `replace`, a folder that a concurrent
    process published first wins (both built the same thing from the same seed)."""
    if replace and out.exists():
        shutil.rmtree(out)
    try:
        os.rename(tmp, out)
    except OSError:
        if not (out / "config.json").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_model(spec: str) -> str:
    """Turn model.base into something `from_pretrained` takes: a local folder or a hub name."""
    if spec.startswith("world:"):
        from seal.warmstart import resolve_world_model  # the warm-started model of seal.world

        return resolve_world_model(spec)
    if spec.startswith(TINY_PREFIX):
        params = parse_tiny_spec(spec)
        key = "-".join(f"{k}{v}" for k, v in sorted(params.items()))
        path = cache_dir() / "tiny" / key
        if not (path / "config.json").exists():
            log.info("building tiny model %s into %s", spec, path)
            build_tiny_model(path, **params, replace=False)
        return str(path)
    if spec.startswith("s3://"):
        path = cache_dir() / "models" / hashlib.sha256(spec.encode()).hexdigest()[:16]
        if not (path / "config.json").exists():
            log.info("copying model %s into %s", spec, path)
            _download_prefix(spec, path)
        return str(path)
    local = Path(spec).expanduser()
    if local.exists():
        if not (local / "config.json").exists():
            raise ConfigError(f"model.base {spec}: folder has no config.json (not a HF model)")
        return str(local)
    if spec.startswith((".", "/", "~")):
        raise ConfigError(f"model.base {spec}: no such folder; build one with `seal tiny-model`")
    return spec  # a hub name: transformers downloads it once into its cache


def _download_prefix(uri: str, path: Path) -> None:
    from seal.store import open_store

    store = open_store(uri)
    keys = store.list()
    if "config.json" not in keys:
        raise ConfigError(f"model.base {uri}: no config.json under that prefix")
    tmp = Path(tempfile.mkdtemp(dir=_mkparent(path), prefix=".dl."))
    for key in keys:
        dest = tmp / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(store.read_bytes(key))
    _publish(tmp, path, replace=False)


def _mkparent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.parent


def load_tokenizer(spec: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model(spec))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(spec: str, placement: Placement):
    """Load a causal LM onto the chosen device, in eval mode."""
    from transformers import AutoModelForCausalLM

    path = resolve_model(spec)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=placement.dtype)
    except OSError as e:
        raise ConfigError(f"model.base {spec}: cannot load ({str(e).splitlines()[0]})") from None
    model.to(placement.device)
    model.eval()
    return model
