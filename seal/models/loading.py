"""Loading causal LMs: a local folder, an s3:// prefix, a hub name, a GGUF file or model package
(converted once into the cache, seal.models.gguf), or a model seal builds itself (tiny random
models, seal.models.tiny; the world's warm-started model, seal.models.warmstart).

torch and transformers are imported inside the functions so that `seal --help`, config checks and
the store work without them loaded, and so GPU-only code paths never run at import time.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seal.errors import ConfigError
from seal.models.cache import cache_dir, mkparent, publish
from seal.models.gguf import PYPI_PREFIX, is_gguf_spec, resolve_gguf
from seal.models.tiny import TINY_PREFIX, resolve_tiny_model
from seal.models.warmstart import resolve_world_model
from seal.store import open_store
from seal.tasks.world import WORLD_PREFIX

log = logging.getLogger(__name__)


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


# model.base prefixes whose models seal builds itself, each with the function that returns the
# built folder (building it once into the cache): a table here, so loading never imports back up.
BUILDERS: dict[str, Callable[[str], str]] = {
    TINY_PREFIX: resolve_tiny_model,
    WORLD_PREFIX: resolve_world_model,
    PYPI_PREFIX: resolve_gguf,
}


def resolve_model(spec: str) -> str:
    """Turn model.base into something `from_pretrained` takes: a local folder or a hub name."""
    for prefix, build in BUILDERS.items():
        if spec.startswith(prefix):
            return build(spec)
    if is_gguf_spec(spec):  # a .gguf path or store URI: converted once into the cache
        return resolve_gguf(spec)
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
    store = open_store(uri)
    keys = store.list()
    if "config.json" not in keys:
        raise ConfigError(f"model.base {uri}: no config.json under that prefix")
    tmp = Path(tempfile.mkdtemp(dir=mkparent(path), prefix=".dl."))
    for key in keys:
        dest = tmp / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(store.read_bytes(key))
    publish(tmp, path, replace=False)


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
