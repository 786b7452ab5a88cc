"""`seal eval-knowledge --setting cpt` and `--setting continual` on a tiny model: the CPT rows with
intervals (LoRA and full fine-tuning), the continual retention matrix's shape with (t, j > t)
never filled, the heat map, and for both a kill mid-way then a rerun that skips what was done and
ends with a clean run's result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY

from seal.cli import main
from seal.store import open_store

pytestmark = pytest.mark.slow

ASSETS = Path(__file__).resolve().parents[1] / "assets"
EDITS = str(ASSETS / "paper_edits_base_sample.json")
SETS = [f"model.base={TINY}", "model.max_length=256", "task.answer_tokens=8", "sampling.max_new_tokens=24",
        "inner.rank=4", "inner.alpha=8", "inner.epochs=2"]


def cpt_args(out: str, *more: str) -> list[str]:
    sets = [x for s in SETS for x in ("--set", s)]
    return ["eval-knowledge", "--setting", "cpt", "--out", out, *sets, "--edits-file", EDITS,
            "--policy", "base", "--limit", "3", "--edits", "2", "--shard-size", "1", *more]


def continual_args(out: str) -> list[str]:
    sets = [x for s in SETS for x in ("--set", s)]
    return ["eval-knowledge", "--setting", "continual", "--out", out, *sets, "--passages", EDITS,
            "--policy", "base", "--edits-file", EDITS, "--steps", "3", "--sequences", "2"]


def kill_when(args: list[str], done: object, store) -> None:
    """Start `seal args` and SIGKILL it as soon as `done(store)` holds."""
    proc = subprocess.Popen([sys.executable, "-m", "seal.cli", *args], env=os.environ.copy(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if done(store):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the evaluation finished before it could be killed"


@pytest.fixture(scope="module")
def cpt_reference(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cpt") / "eval")
    assert main(cpt_args(out)) == 0
    return out


def test_cpt_rows_one_update_each_with_intervals(cpt_reference, capsys):
    store = open_store(cpt_reference)
    table = store.read_json("table.json")
    assert table["setting"] == "cpt" and table["update"] == "lora"
    assert [r["name"] for r in table["rows"]] == ["base model", "passage only",
                                                  "passage + paper_edits_base_sample.json",
                                                  "passage + base model's self-edits"]
    for row in table["rows"]:
        assert row["passages"] == 3
        for g in ("exact_match", "f1", "contains"):
            lo, hi = row["graders"][g]["ci95"]
            assert lo <= row["graders"][g]["mean"] <= hi
    # One update per trained row, on every passage's texts: more examples with self-edits.
    metas = [store.read_json(f"update/{i:02d}.json") for i in (1, 2, 3)]
    assert not store.exists("update/00.json")
    assert metas[0]["examples"] == 3 < metas[1]["examples"]
    assert store.exists("update/01/adapter_config.json")
    assert len(store.read_json("edits/03.json")[0]) == 2  # the policy's sampled edits, kept
    assert main(["eval-knowledge", "--out", cpt_reference, "--join"]) == 0
    assert "one lora update per row on all 3 passages" in capsys.readouterr().out


def test_cpt_killed_mid_way_then_rerun_resumes(tmp_path, cpt_reference):
    out = str(tmp_path / "eval")
    store = open_store(out)
    kill_when(cpt_args(out), lambda s: s.exists("update/02.json"), store)
    assert store.exists("update/01.json") and not store.exists("table.json")
    before = store.read_bytes("update/01.json")
    assert main(cpt_args(out)) == 0
    assert store.read_bytes("update/01.json") == before  # a finished update is not retrained
    ref = open_store(cpt_reference).read_json("table.json")
    assert [r["graders"] for r in store.read_json("table.json")["rows"]] == [r["graders"] for r in ref["rows"]]


def test_cpt_full_fine_tuning_and_the_pods_split(tmp_path, capsys):
    out = str(tmp_path / "eval")
    args = cpt_args(out, "--update", "full", "--set", "inner.lr=1e-5")
    args = [a for a in args if a not in ("--policy", "base")]
    assert main([*args, "--plan-only"]) == 0
    assert main(["eval-knowledge", "--out", out, "--shard", "3"]) == 2  # scoring needs the updates
    assert "not trained yet" in capsys.readouterr().err
    assert main(["eval-knowledge", "--out", out, "--train"]) == 0
    store = open_store(out)
    assert store.exists("update/01/config.json") and store.exists("update/02.json")  # whole models
    for s in ("0-4", "5-8"):
        assert main(["eval-knowledge", "--out", out, "--shard", s]) == 0
    assert not store.exists("table.json")
    assert main(["eval-knowledge", "--out", out, "--join"]) == 0
    assert store.read_json("table.json")["update"] == "full"


@pytest.fixture(scope="module")
def continual_reference(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("continual") / "eval")
    assert main(continual_args(out)) == 0
    return out


def test_continual_matrix_shape_and_nothing_scored_before_it_is_seen(continual_reference, capsys):
    store = open_store(continual_reference)
    result = store.read_json("matrix.json")
    assert result["steps"] == 3 and result["sequences"] == 2
    assert [r["name"] for r in result["rows"]] == ["passage + paper_edits_base_sample.json",
                                                   "passage + base model's self-edits"]
    for row in result["rows"]:
        for m in [*row["matrices"], row["mean"]]:
            assert len(m) == 3 and all(len(r) == 3 for r in m)
            for t in range(3):
                for j in range(3):
                    assert (m[t][j] is None) == (j > t)
        assert row["earlier_mean"][0] is None and all(v is not None for v in row["earlier_mean"][1:])
        assert len({tuple(s) for s in row["sequences"]}) == 2  # two different sequences
    # Each step scored exactly the passages seen so far, in the sequence's order.
    seq = result["rows"][0]["sequences"][0]
    for t in range(3):
        lines = store.read_jsonl(f"continual/000/step-{t:02d}.jsonl")
        assert [x["passage"] for x in lines] == seq[: t + 1] and [x["position"] for x in lines] == list(range(t + 1))
    assert store.read_bytes("matrix.png")[:4] == b"\x89PNG"
    assert main(["eval-knowledge", "--out", continual_reference, "--join"]) == 0
    text = capsys.readouterr().out
    assert "earlier mean (sd)" in text and "t=2" in text


def test_continual_killed_mid_way_then_rerun_resumes(tmp_path, continual_reference):
    out = str(tmp_path / "eval")
    store = open_store(out)
    kill_when(continual_args(out), lambda s: s.exists("continual/000/step-01.jsonl"), store)
    assert not store.exists("matrix.json") and not store.exists("continual/001/step-02.jsonl")
    before = store.read_bytes("continual/000/step-00.jsonl")
    assert main(continual_args(out)) == 0
    assert store.read_bytes("continual/000/step-00.jsonl") == before
    ref = open_store(continual_reference).read_json("matrix.json")
    got = store.read_json("matrix.json")
    for a, b in zip(got["rows"], ref["rows"], strict=True):
        assert a["matrices"] == b["matrices"]


def test_continual_needs_an_edit_source_and_enough_passages(tmp_path, capsys):
    sets = [x for s in SETS for x in ("--set", s)]
    base = ["eval-knowledge", "--setting", "continual", "--out", str(tmp_path / "e"), *sets, "--passages", EDITS]
    assert main([*base, "--plan-only"]) == 2
    assert "name the self-edits' source" in capsys.readouterr().err
    assert main([*base, "--policy", "base", "--steps", "99", "--plan-only"]) == 2
    assert "--steps 99" in capsys.readouterr().err
    assert not open_store(str(tmp_path / "e")).exists("eval.json")
