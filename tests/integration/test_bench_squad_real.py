"""bench/squad_real.py end to end on a tiny model (the real model's run is the lead's, ~40 min):
one ReSTEM round on training passages that leave the evaluation passages out, then every row of
the table, printed with intervals."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from seal.store import open_store
from seal.tasks import knowledge

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "tests/assets"


def load_bench():
    spec = importlib.util.spec_from_file_location("squad_real", ROOT / "bench/squad_real.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_squad_real_runs_every_row_on_a_tiny_model(tmp_path, capsys):
    data = tmp_path / "squad"
    (data / "paper-edits").mkdir(parents=True)
    shutil.copy(ASSETS / "paper_edits_base_sample.json", data / "paper-edits/base_val.json")
    shutil.copy(ASSETS / "paper_edits_gpt4_1_sample.json", data / "paper-edits/gpt4_1_val.json")
    shutil.copy(ASSETS / "paper_edits_base_sample.json", data / "paper-edits/iter1_val.json")  # a stand-in
    evals = json.loads((ASSETS / "paper_edits_base_sample.json").read_text())
    pool = [{k: r[k] for k in ("title", "context", "questions")} for r in evals] + \
        knowledge.load_records("builtin:squad-sample")
    (data / "squad_val.json").write_text(json.dumps(pool))
    bench = load_bench()
    out = tmp_path / "out"
    assert bench.main(["--model", "tiny", "--passages", "2", "--train-passages", "2", "--epochs", "2",
                       "--data", str(data), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for row in ("base model", "passage only", "base-model edits (paper file", "GPT-4.1 edits (paper file)",
                "round-1 policy edits (paper file", "passage + tiny's own edits",
                "passage + tiny's edits after 1 ReSTEM round"):
        assert row in text
    assert "contains % [95% CI]" in text and "ReSTEM round 0 on 2 training passages" in text
    run = open_store(str(out / "runs/restem"))
    plan = run.read_json("round-0/plan.json")
    titles = {knowledge.passage_key(r) for r in evals}
    trained = knowledge.exclude_passages(pool, [str(data / "paper-edits/base_val.json")])
    assert len(trained) == len(pool) - 4
    assert not {knowledge.passage_key(trained[c]) for c in plan["contexts"]} & titles  # held out
    assert run.exists("round-0/policy/policy.json")
