"""Self-edit sampling throughput (generated tokens per second): transformers against vLLM.

Same model, prompts (the knowledge task's self-edit prompts, K per passage) and sampling settings
(temperature, top-p, per-request seeds) for each backend:

  transformers      seal.generate.TransformersGenerator, batches of sampling.batch_size
  vllm              seal.vllm_backend.VllmGenerator over the base model
  vllm + policy     the same engine, every request carrying the policy adapter as a LoRARequest
                    (what round r > 0 samples with; rank mstep.rank on all linear projections)

The transformers arm runs first: vLLM's CPU backend pins this process to one torch thread when
its engine starts. Engine start is reported apart from the tokens/s. Not run by CI. Example:

    /path/to/venv-with-vllm/bin/python bench/sampling.py --k 5 --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny:hidden=256,layers=4,seed=0")
    p.add_argument("--device", default="auto")
    p.add_argument("--k", type=int, default=5, help="self-edits per passage (8 passages)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16, help="transformers batch (sampling.batch_size)")
    p.add_argument("--vllm-memory", type=float, default=0.2, help="sampling.vllm_memory (RAM share on CPU)")
    args = p.parse_args()

    import torch

    from seal.config import load_config
    from seal.generation.params import GenParams
    from seal.generation.transformers_backend import TransformersGenerator
    from seal.models.loading import choose_placement, load_model, load_tokenizer, resolve_model
    from seal.seeds import derive_seed
    from seal.tasks import knowledge

    cfg = load_config(None, [f"model.base={args.model}", f"model.device={args.device}",
                             f"sampling.max_new_tokens={args.max_new_tokens}", f"sampling.batch_size={args.batch_size}",
                             f"sampling.vllm_memory={args.vllm_memory}", "sampling.backend=vllm"])
    path = resolve_model(cfg.model.base)
    records = knowledge.load_records(cfg.task.data)
    jobs = [(c, k) for c in range(len(records)) for k in range(args.k)]
    prompts = [knowledge.context_prompt(records[c], cfg.task) for c, _ in jobs]
    seeds = [derive_seed(cfg.seed, "sample", 0, c, k) for c, k in jobs]
    params = GenParams(max_new_tokens=args.max_new_tokens, temperature=cfg.sampling.temperature,
                       top_p=cfg.sampling.top_p, batch_size=args.batch_size)
    print(f"model {args.model}, {len(prompts)} prompts, up to {args.max_new_tokens} new tokens, "
          f"T={params.temperature} top-p={params.top_p}; torch threads {torch.get_num_threads()}")

    model = load_model(cfg.model.base, choose_placement(cfg.model.device, cfg.model.dtype))
    tok = load_tokenizer(cfg.model.base)
    t0 = time.perf_counter()
    out = TransformersGenerator(model, tok).generate(prompts, seeds, params)
    hf_s = time.perf_counter() - t0
    hf_tokens = sum(c.tokens for c in out)
    print(f"transformers: {hf_tokens} tokens in {hf_s:.1f} s = {hf_tokens / hf_s:.0f} tokens/s")

    # A policy-shaped adapter (random, so it changes the outputs) for the LoRARequest arm.
    from seal.inner.multilora import save_peft, target_names

    g = torch.Generator().manual_seed(0)
    lora = cfg.mstep
    weights = {n: (torch.randn(lora.rank, model.get_submodule(n).in_features, generator=g) * 0.01,
                   torch.randn(model.get_submodule(n).out_features, lora.rank, generator=g) * 0.01)
               for n in target_names(model, lora.target_modules)}
    adapter = tempfile.mkdtemp(prefix="bench-policy-")
    save_peft(weights, lora, adapter)
    del model

    from seal.generation.vllm_backend import VllmGenerator, get_engine, installed

    if not installed():
        print("vllm: not installed here (make install-vllm, or pip install vllm on a GPU machine)")
        return
    t0 = time.perf_counter()
    llm = get_engine(path, cfg)
    print(f"vllm engine start: {time.perf_counter() - t0:.1f} s")
    results = {}
    for name, gen in (("vllm", VllmGenerator(llm)), ("vllm + policy LoRA", VllmGenerator(llm, adapter))):
        gen.generate(prompts[:2], seeds[:2], GenParams(max_new_tokens=4, temperature=1.0))  # warm-up
        t0 = time.perf_counter()
        out = gen.generate(prompts, seeds, params)
        s = time.perf_counter() - t0
        n = sum(c.tokens for c in out)
        results[name] = n / s
        print(f"{name}: {n} tokens in {s:.1f} s = {n / s:.0f} tokens/s")
    for name, rate in results.items():
        print(f"{name} / transformers = {rate / (hf_tokens / hf_s):.1f}x")


if __name__ == "__main__":
    main()
