"""Tiny random Qwen2-style models built on the fly (`model.base: "tiny:hidden=64,layers=2"`), for tests,
the plumbing demo and benchmarks: no weights to download, a tokenizer trained on seal's own text."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from seal.errors import ConfigError
from seal.models.cache import cache_dir, publish
from seal.tasks import knowledge

log = logging.getLogger(__name__)

EOS = "<|endoftext|>"
TINY_PREFIX = "tiny:"


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
    publish(tmp, out, replace=replace)
    return out




def resolve_tiny_model(spec: str) -> str:
    """The folder of the tiny model a 'tiny:...' model.base names, built once into the cache."""
    params = parse_tiny_spec(spec)
    key = "-".join(f"{k}{v}" for k, v in sorted(params.items()))
    path = cache_dir() / "tiny" / key
    if not (path / "config.json").exists():
        log.info("building tiny model %s into %s", spec, path)
        build_tiny_model(path, **params, replace=False)
    return str(path)
