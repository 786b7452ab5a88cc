"""The ReSTEM filter rules and plan sharding."""

from seal.config import FilterConfig, load_config
from seal.stages.improve import filter_scores, sft_rows
from seal.stages.plan import choose_contexts, make_plan, shard_indices

SCORES = [
    {"context": 1, "k": 0, "reward": 0.2, "baseline": 0.3},
    {"context": 1, "k": 1, "reward": 0.6, "baseline": 0.3},
    {"context": 0, "k": 0, "reward": 0.5, "baseline": 0.1},
    {"context": 0, "k": 1, "reward": 0.5, "baseline": 0.1},
    {"context": 2, "k": 0, "reward": 0.0, "baseline": 0.0},
]


def keys(rows):
    return [(r["context"], r["k"]) for r in rows]


def test_top1_keeps_best_per_context_ties_to_lowest_k_and_drops_zero():
    assert keys(filter_scores(SCORES, FilterConfig(rule="top1"))) == [(0, 0), (1, 1)]
    assert keys(filter_scores(SCORES, FilterConfig(rule="top1", min_reward=-1))) == [(0, 0), (1, 1), (2, 0)]


def test_improved_and_threshold():
    assert keys(filter_scores(SCORES, FilterConfig(rule="improved"))) == [(0, 0), (0, 1), (1, 1)]
    assert keys(filter_scores(SCORES, FilterConfig(rule="threshold", threshold=0.5))) == [(0, 0), (0, 1), (1, 1)]


def test_sft_rows_pair_prompt_with_kept_edit():
    edits = {(0, 0): {"prompt": "P0", "text": "E00"}}
    rows = sft_rows([SCORES[2]], edits)
    assert rows == [{"context": 0, "k": 0, "prompt": "P0", "completion": "E00", "reward": 0.5, "baseline": 0.1}]


def test_rounds_take_distinct_contexts_until_they_run_out():
    r0, r1 = choose_contexts(10, 4, 0, 0), choose_contexts(10, 4, 0, 1)
    assert len(set(r0)) == 4 and not set(r0) & set(r1)
    assert choose_contexts(10, 4, 0, 0) == r0  # seeded
    assert len(set(choose_contexts(3, 5, 0, 2))) == 3  # fewer contexts than asked: all, once


def test_plan_shards_cover_every_candidate_once():
    cfg = load_config(None, ["contexts_per_round=5", "edits_per_context=3", "shards.sample_size=2",
                             "shards.adapt_size=4"])
    plan = make_plan(cfg, 20, 0)
    assert [len(s) for s in plan["sample_shards"]] == [2, 2, 1]
    flat = [tuple(p) for shard in plan["adapt_shards"] for p in shard]
    assert sorted(flat) == sorted((c, k) for c in plan["contexts"] for k in range(3))
    assert shard_indices(plan) == {"sample": [0, 1, 2], "adapt": [0, 1, 2, 3]}
