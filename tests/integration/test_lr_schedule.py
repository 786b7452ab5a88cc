"""The learning-rate schedule and gradient accumulation on a tiny model: the sequential trainer
walks lr_factor (its AdamW's lr at each step is lr x the factor), the batched trainer gives the
same adapters under it (tests/integration/test_multilora.py checks that in general), and
accumulation takes one optimiser step per group of batches, restarting every epoch."""

from __future__ import annotations

import torch

from seal.config import InnerLoopConfig, MStepConfig
from seal.inner.multilora import FitJob, train_many
from seal.inner.train import Example, attach_lora, lr_factor, train

EXAMPLES = [Example(text=t) for t in ("Warsaw is the capital of Poland.", "The Vistula flows through Warsaw.",
                                       "Warsaw has about two million people.")]


def fit(model, tok, lora, accumulate=1):
    peft_model = attach_lora(model, lora, seed=1)
    seen = []
    step = torch.optim.AdamW.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *a, **k)

    torch.optim.AdamW.step = spy
    try:
        stats = train(peft_model, tok, EXAMPLES, lora, seed=1, max_length=64, accumulate=accumulate)
    finally:
        torch.optim.AdamW.step = step
    weights = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_" in n}
    peft_model.unload()
    return stats, seen, weights


def test_linear_decay_is_what_the_optimiser_sees_and_changes_the_fit(tiny_model):
    model, tok = tiny_model
    lora = InnerLoopConfig(rank=4, alpha=8, epochs=2, lr=1e-2)
    stats, seen, linear = fit(model, tok, lora)
    assert stats["steps"] == 6
    assert seen == [1e-2 * lr_factor(s, 6, "linear") for s in range(6)] and seen[-1] < seen[0]
    _, flat, constant = fit(model, tok, lora.model_copy(update={"lr_schedule": "constant"}))
    assert flat == [1e-2] * 6
    assert any(not torch.allclose(linear[n], constant[n]) for n in linear)


def test_the_batched_trainer_follows_the_same_schedule(tiny_model):
    model, tok = tiny_model
    lora = InnerLoopConfig(rank=4, alpha=8, epochs=2, lr=1e-2)
    _, _, seq = fit(model, tok, lora)
    res = train_many(model, tok, [FitJob(EXAMPLES, lora, 1)], 64)[0]
    ours = dict(res.weights)
    assert len(ours) == sum("lora_A" in n for n in seq) > 0
    for name, (a, b) in ours.items():
        pa = next(v for n, v in seq.items() if name in n and "lora_A" in n)
        pb = next(v for n, v in seq.items() if name in n and "lora_B" in n)
        assert torch.allclose(a.reshape(pa.shape), pa, atol=1e-5) and torch.allclose(b.reshape(pb.shape), pb, atol=1e-5)


def test_accumulation_steps_once_per_group_restarting_each_epoch(tiny_model):
    model, tok = tiny_model
    lora = MStepConfig(rank=4, alpha=8, epochs=2, batch_size=1, target_modules=["q_proj", "v_proj"])
    stats, seen, _ = fit(model, tok, lora, accumulate=2)
    assert stats["steps"] == 4  # per epoch: batches [2, 1]
    assert seen == [3e-4 * lr_factor(s, 4, "linear") for s in range(4)]
    stats, _, _ = fit(model, tok, lora, accumulate=10)
    assert stats["steps"] == 2  # the paper's effective batch of 10 on 3 pairs: one step an epoch
