"""The batched multi-LoRA trainer against the sequential path (seal.inner.train) on a tiny model."""

import pytest
import torch

from seal.config import LoraConfig
from seal.generation.params import GenParams
from seal.generation.transformers_backend import TransformersGenerator
from seal.inner.multilora import (
    FitJob,
    choose_batch,
    load_peft,
    save_peft,
    schedule,
    train_many,
)
from seal.inner.score import generate_routed
from seal.inner.train import Example, attach_lora, train
from seal.store import open_store

TEXTS = [
    "Warsaw\nWarsaw is the capital of Poland.",
    "Warsaw\nIt lies on the Vistula river.",
    "Normans\nThe Normans gave their name to Normandy.",
    "Tesla\nNikola Tesla was born in 1856.",
    "Tesla\nHe worked on alternating current.",
]


def _sequential(model, tok, job):
    peft_model = attach_lora(model, job.lora, job.seed)
    stats = train(peft_model, tok, job.examples, job.lora, job.seed, max_length=64)
    weights = {}
    for name, mod in peft_model.named_modules():
        if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
            key = name.removeprefix("base_model.model.")
            weights[key] = (mod.lora_A["default"].weight.detach().clone(),
                            mod.lora_B["default"].weight.detach().clone())
    return peft_model.unload(), stats, weights


def _jobs():
    # Different data sizes, epochs, batch sizes, learning rates, alphas and weight decay per
    # candidate (ARC edits choose their own), one shared adapter shape; one job has one example.
    base = dict(rank=4, target_modules=["q_proj", "v_proj"])
    return [
        FitJob([Example(text=t) for t in TEXTS[:2]], LoraConfig(**base, alpha=8, lr=5e-3, epochs=3, batch_size=1), 11),
        FitJob([Example(text=t) for t in TEXTS], LoraConfig(**base, alpha=4, lr=1e-3, epochs=2, batch_size=2), 12),
        FitJob([Example(text=TEXTS[3], prompt="Q: who?\n")],
               LoraConfig(**base, alpha=8, lr=2e-3, epochs=5, batch_size=1, weight_decay=0.1), 13),
        FitJob([Example(text=t) for t in TEXTS[1:4]],
               LoraConfig(**base, alpha=16, lr=1e-2, epochs=1, batch_size=3), 14),
    ]


@pytest.mark.parametrize("one_alpha", [False, True], ids=["alphas-differ", "one-alpha"])
def test_batched_adapters_match_sequential_fits(tiny_model, tmp_path, one_alpha):
    """Each adapter of a batch equals the one peft trains alone, whether the adapters share one
    scale (added in one operator) or not (scaled per row)."""
    model, tok = tiny_model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    jobs = _jobs()
    if one_alpha:
        for job in jobs:
            job.lora = job.lora.model_copy(update={"alpha": 8})
    batched = train_many(model, tok, jobs, max_length=64)
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    for job, res in zip(jobs, batched, strict=True):
        model, stats, weights = _sequential(model, tok, job)
        assert res.stats["steps"] == stats["steps"] == len(schedule(len(job.examples), job.lora, job.seed))
        assert res.stats["first_loss"] == pytest.approx(stats["first_loss"], rel=1e-5)
        assert res.stats["last_loss"] == pytest.approx(stats["last_loss"], rel=1e-4)
        assert set(res.weights) == set(weights)
        for name, (a, b) in weights.items():
            torch.testing.assert_close(res.weights[name][0], a, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(res.weights[name][1], b, rtol=1e-4, atol=1e-6)
        assert any(not torch.equal(b, torch.zeros_like(b)) for _, b in res.weights.values())  # it trained


def test_saved_adapters_load_in_peft_and_routed_answers_match(tiny_model, tmp_path):
    from peft import PeftModel

    model, tok = tiny_model
    jobs = _jobs()[:3]
    results = train_many(model, tok, jobs, max_length=64)
    params = GenParams(max_new_tokens=6, temperature=0.0, batch_size=4, stop_at_newline=False)
    prompts = ["Topic: Warsaw\nWhat is it?\n", "Topic: Tesla\nWho?\n", "x"]
    adapters, prompt_list, ids = [], [], []
    for i, (job, res) in enumerate(zip(jobs, results, strict=True)):
        out = tmp_path / f"a{i}"
        save_peft(res.weights, job.lora, str(out))
        weights, scale = load_peft(str(out))
        assert scale == job.lora.alpha / job.lora.rank
        adapters.append((weights, scale))
        prompt_list += prompts
        ids += [i] * len(prompts)
    routed = generate_routed(model, tok, adapters, jobs[0].lora, prompt_list, ids, params)
    for i in range(len(jobs)):
        peft_model = PeftModel.from_pretrained(model, str(tmp_path / f"a{i}"))
        alone = TransformersGenerator(peft_model, tok).generate(prompts, [0] * 3, params)
        # peft reads the very tensors train_many produced
        for name, (a, _) in results[i].weights.items():
            torch.testing.assert_close(peft_model.get_submodule(f"base_model.model.{name}").lora_A["default"].weight, a)
        model = peft_model.unload()
        assert [c.text for c in routed[3 * i: 3 * i + 3]] == [c.text for c in alone]


def test_memory_budget_picks_batch(tiny_model):
    model, _ = tiny_model
    lora = LoraConfig(rank=4, alpha=8)
    assert choose_batch(model, lora, 128, budget_mb=1, cap=8) == 1
    assert choose_batch(model, lora, 128, budget_mb=10_000, cap=8) == 8
    small, big = (choose_batch(model, lora, 128, budget_mb=m, cap=10_000) for m in (20, 200))
    assert 1 <= small < big


def test_auto_memory_budget_is_half_the_free_memory(tiny_model, monkeypatch):
    """inner.memory_budget_mb=0 sizes B from the device's free memory (here the CPU's MemAvailable)."""
    from seal.inner import multilora

    model, _ = tiny_model
    free = multilora.free_memory_bytes(next(model.parameters()).device)
    assert 0 < free < 2**50  # read from /proc/meminfo, in bytes
    assert multilora.budget_bytes(model, 7) == 7 * 2**20
    lora = LoraConfig(rank=4, alpha=8)
    per = multilora.bytes_per_adapter(model, lora, 128)
    monkeypatch.setattr(multilora, "free_memory_bytes", lambda device: 2 * 5 * per)  # room for 5
    assert multilora.budget_bytes(model, 0) == 5 * per
    assert choose_batch(model, lora, 128, budget_mb=0, cap=100) == 5


def _run(store, *extra):
    from conftest import tiny_overrides

    from seal.cli import main

    sets = [*tiny_overrides(store), "rounds=1", "inner.fits=2", "shards.adapt_size=3", *extra]
    assert main(["run", *sum((["--set", o] for o in sets), [])]) == 0
    return open_store(f"{store}/t")


@pytest.mark.slow
def test_batched_adapt_stage_matches_sequential(tmp_path, monkeypatch):
    """`inner.batched` gives the same score rows and adapters (in peft format) as the sequential
    loop, baselines included, though those come from the shard's one scoring call."""
    from seal.inner import fit

    seq = _run(str(tmp_path / "seq"), "inner.batched=false")

    def no_separate_call(*args, **kwargs):
        raise AssertionError("the batched adapt stage scored a baseline in a call of its own")

    monkeypatch.setattr(fit, "score_model", no_separate_call)
    bat = _run(str(tmp_path / "bat"), "inner.batched=true", "inner.max_batch=4")
    for r in range(1):
        plan = seq.read_json(f"round-{r}/plan.json")
        for a in range(len(plan["adapt_shards"])):
            key = f"round-{r}/scores/{a:05d}.jsonl"
            for s, b in zip(seq.read_jsonl(key), bat.read_jsonl(key), strict=True):
                assert s["trainer"] == "sequential" and b["trainer"] == "batched"
                assert b["score_backend"] == "transformers"
                assert (s["context"], s["k"], s["examples"]) == (b["context"], b["k"], b["examples"])
                assert s["rewards"] == b["rewards"] and s["answers"] == b["answers"] and s["baseline"] == b["baseline"]
                assert len(b["fit_s"]) == len(b["score_s"]) == 2
                for ls, lb in zip(s["losses"], b["losses"], strict=True):
                    assert lb == pytest.approx(ls, rel=1e-4)
                for f in range(2):
                    adapter = f"round-{r}/adapters/{s['context']}/{s['k']}/{f}"
                    names = {k.rsplit("/", 1)[-1] for k in bat.list(adapter)}
                    assert names == {k.rsplit("/", 1)[-1] for k in seq.list(adapter)} - {"README.md"}
                    wa = _tensors(seq, adapter)
                    wb = _tensors(bat, adapter)
                    assert wa.keys() == wb.keys()
                    for k in wa:
                        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-6)


def _tensors(store, prefix):
    from safetensors.torch import load

    return load(store.read_bytes(f"{prefix}/adapter_model.safetensors"))


def test_fast_init_is_peft_init(tiny_model):
    from seal.inner.multilora import fast_init, peft_init

    model, _ = tiny_model
    for lora, seed in ((LoraConfig(rank=4, alpha=8), 3),
                       (LoraConfig(rank=8, target_modules=["q_proj", "down_proj"]), 9)):
        ref, fast = peft_init(model, lora, seed), fast_init(model, lora, seed)
        assert ref.keys() == fast.keys()
        assert all(torch.equal(ref[k][0], fast[k][0]) and torch.equal(ref[k][1], fast[k][1]) for k in ref)


@pytest.mark.parametrize("per_row", [True, False], ids=["attention-per-row", "attention-per-group"])
def test_packed_passes_match_padded_ones(tiny_model, monkeypatch, per_row):
    """Packed passes (rows end to end, each attending only to itself) train the same adapters as
    padded rows, both ways a packed pass can run attention (row by row, a CPU's default; per group
    of padded rows, a GPU's); the tiny model supports them, so the default path is the packed one."""
    from seal.inner import multilora
    from seal.inner.multilora import packing_works

    monkeypatch.setattr(multilora, "PER_ROW", per_row)
    model, tok = tiny_model
    assert packing_works(model)
    impl = model.config._attn_implementation
    jobs = _jobs()
    packed = train_many(model, tok, jobs, max_length=64, pack=True)
    padded = train_many(model, tok, jobs, max_length=64, pack=False)
    assert model.config._attn_implementation == impl  # put back
    for a, b in zip(packed, padded, strict=True):
        assert a.stats["steps"] == b.stats["steps"]
        assert a.stats["last_loss"] == pytest.approx(b.stats["last_loss"], rel=1e-5)
        for name, (wa, wb) in a.weights.items():
            torch.testing.assert_close(wa, b.weights[name][0], rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(wb, b.weights[name][1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "multi-tensor"])
def test_stacked_adamw_is_torch_adamw_per_adapter_with_lr_scale(monkeypatch, fused):
    """Steps of the stacked optimiser on 4 adapters (the rows of one flat tensor), 3 of them active
    with a scaled lr (a learning-rate schedule's factor) and different lrs and weight decays (two
    share theirs: one fused call), equal torch.optim.AdamW with that lr on each active adapter's
    row; the inactive adapter does not move. Both ways it steps: torch's fused kernel and the
    multi-tensor fallback."""
    from seal.inner import multilora
    from seal.inner.multilora import _StackedAdamW

    monkeypatch.setattr(multilora, "FUSED_ADAMW", fused)
    torch.manual_seed(0)
    loras = [LoraConfig(lr=1e-2, weight_decay=0.1), LoraConfig(lr=3e-3), LoraConfig(lr=5e-3, weight_decay=0.01),
             LoraConfig(lr=1e-2, weight_decay=0.1)]
    flat = torch.randn(4, 20)
    flat.grad = torch.zeros_like(flat)
    start = flat.clone()
    opt = _StackedAdamW(flat, loras)
    assert opt.fused == fused
    grads = [torch.randn_like(flat) for _ in range(3)]
    factors = (0.5, [0.25, 1.0, 0.25], None)
    for step, scale in enumerate(factors):
        opt.zero_grad()
        flat.grad += grads[step]
        flat.grad[1] = 0  # adapter 1 had no rows in these passes
        opt.step([0, 2, 3], lr_scale=scale)
    for i, own in ((0, (0.5, 0.25, 1.0)), (2, (0.5, 1.0, 1.0)), (3, (0.5, 0.25, 1.0))):
        alone = torch.nn.Parameter(start[i].clone())
        ref = torch.optim.AdamW([alone], lr=loras[i].lr, weight_decay=loras[i].weight_decay, foreach=False)
        for step, factor in enumerate(own):
            for group in ref.param_groups:
                group["lr"] = loras[i].lr * factor
            alone.grad = grads[step][i].clone()
            ref.step()
        torch.testing.assert_close(flat[i], alone.detach(), rtol=1e-6, atol=1e-7)
    assert torch.equal(flat[1], start[1])
