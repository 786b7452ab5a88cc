"""seal.tasks.world (the synthetic world) and seal.models.warmstart (its base model's data):
determinism, no leak of held-out facts into any training data, the style heuristic. The
end-to-end run is in tests/integration/test_world_pipeline.py."""

from __future__ import annotations

import itertools
import random

import pytest

from seal.errors import ConfigError
from seal.models import warmstart
from seal.tasks import knowledge, world

SPEC = world.WorldSpec(seed=3)


def test_world_is_seeded_and_in_squad_form():
    a, b = world.generate(SPEC), world.generate(SPEC)
    assert a == b
    assert world.generate(world.WorldSpec(seed=4))["heldout"] != a["heldout"]
    for split in world.SPLITS:
        assert len(a[split]) == getattr(SPEC, split)
    recs = knowledge.load_records("world:seed=3,split=heldout")
    assert recs == a["heldout"]
    rec = recs[0]
    assert len(rec["questions"]) == len(world.ATTRIBUTES)
    for attr, q in zip(world.ATTRIBUTES, rec["questions"], strict=True):
        assert q["answer"] == rec["facts"][attr]
        assert rec["title"] in q["question"]
        assert q["answer"] in rec["context"]  # every asked fact is stated in the passage


def test_bad_world_sources_fail_with_one_line():
    with pytest.raises(ConfigError, match="split"):
        knowledge.load_records("world:seed=0,split=test")
    with pytest.raises(ConfigError, match="unknown key"):
        knowledge.load_records("world:seed=0,colour=1")
    with pytest.raises(ConfigError, match="model.base"):
        warmstart.parse_model_spec("world:seed=0,depth=3")


def test_splits_share_no_entity_and_heldout_never_reaches_training_data():
    w = world.generate(SPEC)
    names = {s: {r["title"] for r in w[s]} for s in world.SPLITS}
    for x, y in itertools.combinations(world.SPLITS, 2):
        assert not names[x] & names[y]
    # No held-out name occurs in any training text: the train split's passages and questions,
    # the tokenizer's corpus, and a long stretch of the warm-start example stream.
    training = world.all_text(w["train"]) + "\n".join(warmstart.tokenizer_corpus(w["warmstart"]))
    stream = warmstart.example_stream(w["warmstart"], "implications", random.Random(0), SPEC)
    warm = "\n".join(ex.prompt + ex.text for ex in itertools.islice(stream, 5000))
    training += warm
    for name in names["train"]:  # ReSTEM's passages are unknown to the base model too
        assert name not in warm
    for name in names["heldout"]:
        assert name not in training


def test_edit_styles_are_told_apart_by_the_heuristic():
    rng = random.Random(0)
    recs = world.generate(SPEC)["train"]
    for rec, style in itertools.product(recs[:10], world.STYLES):
        assert world.edit_style(rec, world.write_edit(rec, style, rng)) == style
    assert world.edit_style(recs[0], "") == "drift"
    assert world.edit_style(recs[0], "What is the job?\nbaker\nnoise") == "qa"


def test_warmstart_examples_mix_styles_uniformly():
    recs = world.generate(SPEC)["warmstart"]
    stream = warmstart.example_stream(recs, "implications", random.Random(1), SPEC)
    policy = [ex for ex in itertools.islice(stream, 4000) if ex.prompt.startswith("Read the following")]
    counts = {s: 0 for s in world.STYLES}
    for ex in policy:
        title = ex.prompt.split("Title: ")[1].split("\n")[0]
        counts[world.edit_style({"title": title}, ex.text)] += 1
    shares = [c / len(policy) for c in counts.values()]
    assert all(abs(s - 1 / 3) < 0.05 for s in shares), counts


def test_qa_pairs_train_a_question_with_its_answer_in_the_probe_form():
    rec = {"title": "Kamak", "context": "Kamak works as a baker."}
    edit = "What is the job of Kamak?\n baker\nKamak keeps a cat.\nWhy?\nWhere?\nBrill"
    assert knowledge.training_texts(rec, edit, with_passage=False, qa_pairs=True) == [
        "Kamak\nWhat is the job of Kamak?\nbaker", "Kamak\nKamak keeps a cat.", "Kamak\nWhy?",
        "Kamak\nWhere?\nBrill"]
    assert len(knowledge.training_texts(rec, edit, with_passage=False)) == 6  # off: one line each
    probe = knowledge.question_prompt("Kamak", "What is the job of Kamak?", "topic") + "baker"
    assert probe.endswith(knowledge.training_texts(rec, edit, False, True)[0].split("\n", 1)[1])
