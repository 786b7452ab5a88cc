"""Generation and LoRA training on a tiny model: seeding, stopping, loss masking, clean unload."""

import pytest
import torch

from seal.config import LoraConfig
from seal.generation.params import GenParams
from seal.generation.transformers_backend import TransformersGenerator
from seal.inner.train import IGNORE, Example, attach_lora, collate, encode, train


def test_sampling_depends_on_seed_not_on_batch(tiny_model):
    model, tok = tiny_model
    gen = TransformersGenerator(model, tok)
    params = GenParams(max_new_tokens=12, temperature=1.0, top_p=0.95, batch_size=8)
    batch = gen.generate(["Title: Warsaw", "a much longer prompt about Normans and Tesla", "x"], [7, 8, 7], params)
    alone = gen.generate(["Title: Warsaw"], [7], params)[0]
    assert batch[0] == alone
    assert all(c.tokens <= 12 and c.finish in ("stop", "length") for c in batch)
    assert gen.generate(["Title: Warsaw"], [9], params)[0].text != alone.text


def test_greedy_is_deterministic_and_stops_at_newline(tiny_model):
    model, tok = tiny_model
    gen = TransformersGenerator(model, tok)
    g = GenParams(max_new_tokens=40, temperature=0.0, stop_at_newline=True)
    a = gen.generate(["Topic: Warsaw\nWhat is it?\n"], [1], g)[0]
    b = gen.generate(["Topic: Warsaw\nWhat is it?\n"], [2], g)[0]
    assert a == b
    assert "\n" not in a.text.strip()


def test_encode_masks_prompt_and_collate_masks_padding(tiny_model):
    _, tok = tiny_model
    ids, labels = encode(tok, Example(text="the answer", prompt="the prompt "), 64)
    n_prompt = len(tok("the prompt ", add_special_tokens=False)["input_ids"])
    assert labels[:n_prompt] == [IGNORE] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:] and ids[-1] == tok.eos_token_id
    short = encode(tok, Example(text="hi"), 64)
    batch = collate([(ids, labels), short], tok.pad_token_id)
    assert batch["attention_mask"][1].sum() == len(short[0])
    assert (batch["labels"][1, len(short[0]):] == IGNORE).all()


def test_padding_does_not_change_the_loss(tiny_model):
    model, tok = tiny_model
    row = encode(tok, Example(text="Warsaw is the capital of Poland."), 64)
    long = encode(tok, Example(text="a much longer text " * 5), 128)
    alone = collate([row], tok.pad_token_id)
    padded = {k: v[:1] for k, v in collate([row, long], tok.pad_token_id).items()}
    assert padded["input_ids"].shape[1] > alone["input_ids"].shape[1]
    with torch.no_grad():
        assert float(model(**alone).loss) == pytest.approx(float(model(**padded).loss), rel=1e-5)


def test_fits_are_seeded_learn_and_unload_cleanly(tiny_model):
    model, tok = tiny_model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lora = LoraConfig(rank=4, alpha=8, lr=5e-3, epochs=8, batch_size=2)
    examples = [Example(text="Warsaw\nWarsaw is the capital of Poland."), Example(text="Warsaw\nIt is big.")]
    results = []
    for _ in range(2):
        peft_model = attach_lora(model, lora, seed=3)
        stats = train(peft_model, tok, examples, lora, seed=3, max_length=64)
        weights = {k: v.clone() for k, v in peft_model.state_dict().items() if "lora_" in k}
        model = peft_model.unload()
        results.append((stats, weights))
    (s1, w1), (s2, w2) = results
    assert s1["steps"] == 8 and s1["last_loss"] < s1["first_loss"]
    assert s1 == s2 and all(torch.equal(w1[k], w2[k]) for k in w1)
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
