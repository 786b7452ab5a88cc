"""Checks shared by the integration and deploy tests: a run's layout, and a run's objects with the
figures that may differ between two runs (timings, where the store is) left out."""

from __future__ import annotations

from seal.store import Store, open_store


def check_layout(run_uri: str) -> dict:
    """Every artifact of the store layout (seal.stages.runs, docs/architecture.md) is there and
    consistent, for the 2-round tiny run of conftest.tiny_overrides; returns the figures to compare."""
    run = open_store(run_uri)
    meta = run.read_json("run.json")
    assert meta["status"] == "succeeded" and meta["config"]["rounds"] == 2
    figures = {}
    for r in range(2):
        plan = run.read_json(f"round-{r}/plan.json")
        assert len(plan["contexts"]) == 3 and len(plan["sample_shards"]) == 2 and len(plan["adapt_shards"]) == 3
        edits = [row for s in range(2) for row in run.read_jsonl(f"round-{r}/edits/{s:05d}.jsonl")]
        assert sorted((e["context"], e["k"]) for e in edits) == sorted((c, k) for c in plan["contexts"] for k in (0, 1))
        assert all(e["prompt"] and e["backend"] == "transformers" for e in edits)
        scores = [row for a in range(3) for row in run.read_jsonl(f"round-{r}/scores/{a:05d}.jsonl")]
        assert len(scores) == 6
        for s in scores:
            assert len(s["rewards"]) == 1 and 0.0 <= s["reward"] <= 1.0 and "baseline" in s
            adapter = f"round-{r}/adapters/{s['context']}/{s['k']}/0"
            assert run.exists(adapter)
            assert any(k.endswith("adapter_config.json") for k in run.list(adapter))
        kept = run.read_jsonl(f"round-{r}/kept.jsonl")
        assert len(kept) == 3  # top1 with min_reward=-1: one per context
        policy = run.read_json(f"round-{r}/policy/policy.json")
        assert policy["adapter"] is True and policy["examples"] == 3
        assert any(k.endswith("adapter_model.safetensors") for k in run.list(f"round-{r}/policy"))
        summary = run.read_json(f"round-{r}/summary.json")
        assert summary["kept"] == 3 and summary["candidates"] == 6
        figures[r] = {
            "edits": sorted((e["context"], e["k"], e["text"]) for e in edits),
            "rewards": sorted((s["context"], s["k"], s["rewards"][0], s["baseline"]) for s in scores),
            # rewards of a random tiny model are ~0; the fits' losses show the training reproduced
            "losses": sorted((s["context"], s["k"], tuple(s["losses"][0])) for s in scores),
            "policy_loss": policy["last_loss"],
            "kept": [(k["context"], k["k"]) for k in kept],
            "summary": {k: summary[k] for k in ("mean_reward", "max_reward", "mean_baseline", "kept", "tokens")},
        }
    # round 1 samples from round 0's policy, so its edits differ from a fresh start's
    assert figures[0]["edits"] != figures[1]["edits"]
    return figures


# Wall-clock figures, run.json's timestamps and status, and where the store is (a folder or S3) are
# the only things allowed to differ.
TIMING = {"gen_s", "fit_s", "score_s", "seconds", "created", "updated", "message", "status", "store"}


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def snapshot(run: Store, prefix: str = "") -> dict[str, object]:
    """Every object of a run: JSON and JSON lines without timings, anything else as bytes."""
    out: dict[str, object] = {}
    for key in run.list(prefix):
        rel = key
        if key.endswith(".jsonl"):
            out[rel] = [_strip(r) for r in run.read_jsonl(key)]
        elif key.endswith(".json"):
            out[rel] = _strip(run.read_json(key))
            if key.endswith("adapter_config.json"):  # PEFT writes a set: its order varies by process
                out[rel]["target_modules"] = sorted(out[rel]["target_modules"])
        else:
            out[rel] = run.read_bytes(key)
    return out


def sets(overrides: list[str]) -> list[str]:
    return sum((["--set", o] for o in overrides), [])
