"""Few-shot ARC end to end on a tiny model, on CPU: `seal run`, the stage commands with chosen
self-edits (test-time training, voting, skips counted, the M-step), and `seal eval-arc`."""

from __future__ import annotations

import json

import pytest
from conftest import TINY

from seal.cli import main
from seal.store import open_store

pytestmark = pytest.mark.slow

EDIT = {"augmentations": ["basic"], "loss": "outputs", "lr": 1e-3, "epochs": 2}


def arc_overrides(store: str, run_id: str) -> list[str]:
    """One round over the 3 builtin:arc-demo tasks, K=2, small TTT sets, 3 flat voting views."""
    return [
        f"store={store}", f"run_id={run_id}", "rounds=1", "contexts_per_round=3", "edits_per_context=2",
        f"model.base={TINY}", "model.device=cpu", "model.max_length=512",
        "task.name=arc", "task.data=builtin:arc-demo", "task.answer_tokens=20",
        "task.arc.leave_two_out=false", "task.arc.max_examples=6", "task.arc.compute_cap=100",
        "task.arc.voting=flat", "task.arc.vote_transforms=[identity,rot90,transpose]", "task.arc.edit_attempts=2",
        "sampling.max_new_tokens=24", "sampling.batch_size=8",
        "inner.fits=1", "inner.rank=4", "inner.alpha=8", "inner.batch_size=2", "inner.keep_adapters=none",
        "filter.rule=threshold", "filter.threshold=1.0",
        "mstep.rank=4", "mstep.alpha=8", "mstep.epochs=1", "mstep.target_modules=[q_proj,v_proj]",
        "shards.sample_size=2", "shards.adapt_size=3",
    ]


def sets(overrides: list[str]) -> list[str]:
    return sum((["--set", o] for o in overrides), [])


def test_seal_run_counts_unparseable_edits_and_keeps_none(tmp_path, capsys):
    store = str(tmp_path / "runs")
    assert main(["run", *sets(arc_overrides(store, "a"))]) == 0
    assert "round  contexts" in capsys.readouterr().out
    run = open_store(f"{store}/a")
    assert run.read_json("run.json")["status"] == "succeeded"
    edits = [e for s in range(2) for e in run.read_jsonl(f"round-0/edits/{s:05d}.jsonl")]
    assert len(edits) == 6 and all("Self-edit:" in e["prompt"] for e in edits)
    assert all(e["samples"] == 2 for e in edits)  # none parses: sampled again once (edit_attempts=2)
    scores = [r for a in range(2) for r in run.read_jsonl(f"round-0/scores/{a:05d}.jsonl")]
    assert len(scores) == 6
    # a random tiny model writes no valid JSON: every edit is skipped with its reason, reward 0
    assert all(r["skip"].startswith("unparseable edit: ") and r["reward"] == 0.0 for r in scores)
    assert all(r["baseline"] in (0.0, 1.0) for r in scores)  # in-context voting, no training
    summary = run.read_json("round-0/summary.json")
    assert (summary["candidates"], summary["skipped"], summary["kept"]) == (6, 6, 0)
    assert run.read_json("round-0/policy/policy.json")["adapter"] is False


# Two small tasks (2x2 grids) keep the prompts short: flip left-right (3 demonstrations), and
# identity (2 demonstrations).
SMALL = {
    "flip": {"train": [{"input": [[1, 2], [3, 4]], "output": [[2, 1], [4, 3]]},
                       {"input": [[5, 0], [0, 6]], "output": [[0, 5], [6, 0]]},
                       {"input": [[7, 7], [8, 0]], "output": [[7, 7], [0, 8]]}],
             "test": [{"input": [[1, 0], [2, 3]]}]},
    "same": {"train": [{"input": [[1, 2], [3, 4]], "output": [[1, 2], [3, 4]]},
                       {"input": [[9, 0], [0, 9]], "output": [[9, 0], [0, 9]]}],
             "test": [{"input": [[4, 4], [0, 1]]}]},
}
SMALL_SOLUTIONS = {"flip": [[[0, 1], [3, 2]]], "same": [[[4, 4], [0, 1]]]}


def test_stage_commands_train_chosen_edits_then_eval_arc(tmp_path, capsys):
    """Well-formed, clamped, malformed and over-cap edits through adapt and improve."""
    store = str(tmp_path / "runs")
    uri = f"{store}/b"
    (tmp_path / "ch.json").write_text(json.dumps(SMALL))
    (tmp_path / "so.json").write_text(json.dumps(SMALL_SOLUTIONS))
    over = [o for o in arc_overrides(store, "b") if not o.startswith(("store=", "run_id=", "task.data="))]
    over += [f"task.data={tmp_path / 'ch.json'}", f"task.arc.solutions={tmp_path / 'so.json'}",
             "contexts_per_round=2", "task.answer_tokens=12", "task.arc.compute_cap=20"]
    # threshold 0 keeps every edit, so the M-step runs on ARC rows even when none solves its task
    cfg_file = tmp_path / "arc.yaml"
    cfg_file.write_text("")
    assert main(["init", "--run", uri, "--config", str(cfg_file), *sets([*over, "filter.threshold=0.0"])]) == 0
    assert main(["plan", "--run", uri, "--round", "0"]) == 0
    run = open_store(uri)
    plan = run.read_json("round-0/plan.json")
    texts = {
        0: json.dumps(EDIT),
        1: json.dumps({**EDIT, "lr": 5.0, "loss": "all", "augmentations": []}),  # lr clamped
        2: "rotate everything, 3 epochs",  # unparseable
        # 6 examples are kept (max_examples): 2 epochs fit under the cap of 20 steps, 10 do not
        # (10 x 6 / batch 2 = 30; the cap is judged after the truncation, as in the paper)
        3: json.dumps({**EDIT, "epochs": 10}),
    }
    for s, contexts in enumerate(plan["sample_shards"]):
        rows = [{"context": c, "k": k, "prompt": f"prompt {c}", "text": texts[(2 * c + k) % 4], "tokens": 10,
                 "finish": "stop", "seed": 0, "backend": "test", "gen_s": 0.0}
                for c in contexts for k in range(2)]
        run.write_jsonl(f"round-0/edits/{s:05d}.jsonl", rows)
    for a in range(len(plan["adapt_shards"])):
        assert main(["adapt", "--run", uri, "--round", "0", "--shard", str(a)]) == 0
    assert main(["improve", "--run", uri, "--round", "0"]) == 0
    scores = {(r["context"], r["k"]): r for a in range(2) for r in run.read_jsonl(f"round-0/scores/{a:05d}.jsonl")}
    assert len(scores) == 4
    for (c, k), r in scores.items():
        kind = (2 * c + k) % 4
        assert r["reward"] in (0.0, 1.0) and r["baseline"] in (0.0, 1.0)
        if kind in (0, 1):
            assert "skip" not in r and 0 < r["examples"] <= 6 and len(r["losses"]) == 1
            assert all(loss == loss for loss in r["losses"][0])  # finite, not NaN
            assert len(r["answers"][0][0]) <= 2  # pass@2: at most two voted candidates (one test input)
        if kind == 1:
            assert r["job"]["edit"]["lr"] == 1e-3 and r["job"]["edit_notes"] == ["lr 5 clamped to 0.001"]
        if kind == 2:
            assert r["skip"].startswith("unparseable edit: edit does not start with a JSON object")
        if kind == 3:
            assert r["skip"].startswith("over the compute cap: 10 epochs x ")
    summary = run.read_json("round-0/summary.json")
    assert summary["skipped"] == 2 and summary["kept"] == 4
    policy = run.read_json("round-0/policy/policy.json")
    assert policy["adapter"] is True and policy["examples"] == 4
    capsys.readouterr()

    # eval-arc: the run's policy row, in-context only, and the oracle row, on the same task set
    out = tmp_path / "eval.json"
    rc = main(["eval-arc", str(cfg_file), *sets(over), "--run", uri, "--edits", "1", "--rows", "policy,icl,oracle",
               "--oracle", json.dumps(EDIT), "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "SEAL policy self-edits (round 0)" in printed and "in-context only" in printed
    assert "fixed self-edit (oracle)" in printed and "un-trained" not in printed
    results = {r["row"]: r for r in json.loads(out.read_text())}
    assert results["oracle"]["edits"] == 2 and results["oracle"]["skipped"] == 0
    assert results["icl"]["edits"] == 2 and results["policy"]["edits"] == 2
    assert all(0.0 <= r["success"] <= 1.0 for r in results.values())
    assert all(d["examples"] > 0 for d in results["oracle"]["details"])


def test_eval_arc_rejects_bad_input(tmp_path, capsys):
    base = [*sets([f"model.base={TINY}", "task.name=arc", "task.data=builtin:arc-demo"])]
    (tmp_path / "c.yaml").write_text("")
    cfg = str(tmp_path / "c.yaml")
    assert main(["eval-arc", cfg, *base, "--oracle", '{"augmentations": ["spin"]}']) == 2
    assert "--oracle: missing key(s) loss, lr, epochs" in capsys.readouterr().err
    assert main(["eval-arc", cfg, *base, "--oracle", '{"augmentations": ["spin"], "loss": "all", '
                 '"lr": 1e-4, "epochs": 1}']) == 2
    assert "unknown augmentation family 'spin'" in capsys.readouterr().err
    assert main(["eval-arc", cfg, *base, "--run", str(tmp_path / "nope")]) == 2
    assert "nope/run.json does not exist" in capsys.readouterr().err
    assert main(["eval-arc", cfg, *base, "--rows", "best"]) == 2
    assert "--rows best: choose from policy,untrained,icl,oracle" in capsys.readouterr().err
    assert main(["eval-arc", cfg, "--oracle", "{}"]) == 2
    assert "needs task.name: arc" in capsys.readouterr().err


CHAT_TEMPLATE = (
    "{% for m in messages %}### {{ m['role'] }}:\n{{ m['content'] | trim }}\n{% endfor %}"
    "{% if add_generation_prompt %}### assistant:\n{% endif %}"
)


def test_chat_format_runs_end_to_end(tmp_path, capsys):
    """A tiny model whose tokenizer has a chat template: the runtime binds it to the records, and
    self-edit prompts, TTT data and probes are chat-formatted; eval-arc trains and scores in it."""
    from transformers import AutoTokenizer

    from seal.config import load_config
    from seal.models.tiny import resolve_tiny_model
    from seal.stages.runtime import Runtime
    from seal.tasks import arc

    folder = tmp_path / "chat-model"
    folder.mkdir()
    src = resolve_tiny_model(TINY)
    for f in ("config.json", "model.safetensors"):
        (folder / f).symlink_to(f"{src}/{f}")
    tok = AutoTokenizer.from_pretrained(src)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(folder)
    over = [o for o in arc_overrides(str(tmp_path / "runs"), "c") if not o.startswith("model.base=")]
    over += [f"model.base={folder}", "task.arc.tasks=[6150a2bd]"]
    rt = Runtime(load_config(None, over), None)
    rec = rt.records[0]
    assert rec["chat"] is not None
    prompt = arc.context_prompt(rec, rt.cfg.task)
    assert prompt.startswith("### system:\n" + arc.EDIT_SYSTEM) and prompt.endswith("### assistant:\n")
    probes = arc.probe_prompts(rec, rt.cfg.task)  # flat voting: identity, rot90, transpose views
    assert probes[0].endswith("### user:\nInput:\n" + arc.grid_to_text(rec["tests"][0]["input"])
                              + "\nOutput:\n### assistant:\n")
    assert all(p.startswith("### system:\n" + arc.PUZZLE_HEADER) and p.endswith("Output:\n### assistant:\n")
               for p in probes)
    job = arc.inner_job(rec, json.dumps(EDIT), rt.cfg.task, rt.cfg.inner)
    assert job.examples and all(x.prompt.endswith("### assistant:\n") for x in job.examples)
    (tmp_path / "c.yaml").write_text("")
    out = tmp_path / "eval.json"
    assert main(["eval-arc", str(tmp_path / "c.yaml"), *sets(over), "--rows", "icl,oracle",
                 "--oracle", json.dumps(EDIT), "--out", str(out)]) == 0
    results = {r["row"]: r for r in json.loads(out.read_text())}
    assert results["oracle"]["edits"] == 1 and results["oracle"]["details"][0]["examples"] > 0
    assert "skip" not in results["oracle"]["details"][0]
    assert "tasks" in capsys.readouterr().out  # a context is a task: the table says so
