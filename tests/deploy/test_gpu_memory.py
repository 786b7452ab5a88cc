"""`seal plan --dry-run --gpu TYPE`: a GPU pod's memory plan for a run config and the GPU types it fits."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from seal.cli import main
from seal.cluster.gpu_memory import GIB, GPUS, KNOWN_MODELS, model_arch, plan
from seal.config import load_config
from seal.inner.multilora import bytes_per_adapter

ROOT = Path(__file__).resolve().parents[2]
SQUAD = str(ROOT / "configs/squad-qwen2.5-7b.yaml")


def test_parameter_counts_match_the_published_sizes():
    assert KNOWN_MODELS["Qwen/Qwen2.5-7B"].parameters() / 1e9 == pytest.approx(7.62, abs=0.01)  # model card: 7.61B
    assert KNOWN_MODELS["meta-llama/Llama-3.2-1B"].parameters() / 1e9 == pytest.approx(1.24, abs=0.01)


@pytest.mark.parametrize("gpu, fits", [("a100-40gb", False), ("h100-80gb", True), ("h200-141gb", True)])
def test_the_paper_config_on_40_80_and_141_gb(capsys, gpu, fits):
    assert main(["plan", "--dry-run", "--config", SQUAD, "--gpu", gpu]) == 0
    out = capsys.readouterr().out
    section = out[out.index("GPU memory of an adapt pod"):]
    assert "base weights" in section and "vLLM's share (sampling.vllm_memory 0.5)" in section
    assert "batched trainer: B=" in section and "merged policy for vLLM, 14.2 GiB" in section
    total = re.search(r"([\d.]+) GiB  total of ([\d.]+): (fits|does not fit)", section)
    used, size = float(total.group(1)), float(total.group(2))
    assert (total.group(3) == "fits") == fits == (used <= size)
    weights, share, reserve, trainer = (float(x) for x in re.findall(r"^\s+([\d.]+) GiB  ", section, re.M)[:4])
    assert used == pytest.approx(weights + share + reserve + trainer, abs=0.15)
    assert share == pytest.approx(0.5 * size, abs=0.1)
    fit_line = section.splitlines()[-1]
    assert fit_line.startswith("fits on: a100-80gb") and "not on: l4-24gb, a100-40gb, l40s-48gb" in fit_line
    if not fits:  # the suggested settings fit the card
        m = re.search(r"sampling.vllm_memory=([\d.]+) .* at most (\d+) tokens", section)
        cfg = load_config(SQUAD, [f"sampling.vllm_memory={m.group(1)}"])
        assert not plan(cfg, GPUS[gpu][0], int(m.group(2))).problems()
        assert plan(cfg, GPUS[gpu][0], int(m.group(2)) + 64).problems()


def test_the_trainer_is_priced_as_the_batched_trainer_prices_it(tmp_path):
    """The plan's per-adapter bytes, from config figures alone, equal multilora.bytes_per_adapter
    on the real (tiny) model built from the same config.json."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    conf = Qwen2Config(vocab_size=512, hidden_size=128, intermediate_size=352, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(conf).to(torch.bfloat16)
    conf.save_pretrained(tmp_path)
    cfg = load_config(SQUAD, [f"model.base={tmp_path}", "model.dtype=bfloat16"])
    arch = model_arch(str(tmp_path))
    assert arch.parameters() == sum(p.numel() for p in model.parameters())
    p = plan(cfg, 80, row_tokens=300)
    assert p.per_adapter == bytes_per_adapter(model, cfg.inner, 300)
    assert p.weights == 2 * sum(p.numel() for p in model.parameters())
    assert json.loads((tmp_path / "config.json").read_text())["hidden_size"] == 128


def test_a_smaller_vllm_share_leaves_the_trainer_more_adapters():
    cfg = load_config(SQUAD, [])
    small = load_config(SQUAD, ["sampling.vllm_memory=0.3"])
    assert plan(small, 140.4, 512).batch > plan(cfg, 140.4, 512).batch >= 1
    assert plan(cfg, 140.4, 512).used <= 140.4 * GIB


@pytest.mark.parametrize("argv, needle", [
    (["--gpu", "b200"], "not a GPU type"),
    (["--gpu", "-3"], "must be positive"),
    (["--set", "model.base=someone/unknown-model", "--gpu", "80"], "no architecture figures"),
])
def test_bad_gpu_input_is_one_line(capsys, argv, needle):
    assert main(["plan", "--dry-run", "--config", SQUAD, *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("seal: error:") and needle in err[0]
