"""Hostile data and config files: each ends in one line naming the input, with exit 2 (a config
to fix) or 65 (data to fix), no traceback, inside the memory and CPU limits, and writes no round.

Data cases run `seal run` (the task data is read by the plan stage, after run.json is written),
config cases `seal init`, which writes nothing when the config is refused. Property-based cases
(hypothesis) throw arbitrary JSON shapes at the record validator and arbitrary values at every
config key.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import TINY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from seal_proc import REPO, assert_refused, seal

from seal.config import MAX_CANDIDATES, RunConfig, describe_fields, load_config
from seal.errors import ConfigError, DataError
from seal.store import parse_json
from seal.tasks.knowledge import MAX_PASSAGE_CHARS, validate_records

GOOD = [{"title": "T", "context": "A passage.", "questions": [{"question": "Q?", "answer": "A"}]}]


def run_with_data(tmp_path: Path, data: bytes | str) -> tuple[object, Path]:
    path = tmp_path / "data.json"
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    store = tmp_path / "store"
    res = seal("run", "--set", f"store={store}", "--set", "run_id=h", "--set", f"model.base={TINY}",
               "--set", f"task.data={path}", "--set", "rounds=1")
    return res, store


def nothing_planned(store: Path) -> bool:
    return not list(store.glob("h/round-*"))


DATA_CASES = {
    "deep-nesting": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    "5000-digit-number": ('[{"title": "T", "context": "c", "questions": [], "n": ' + "9" * 5000 + "}]",
                          "a number over 4300 digits"),
    "binary": (bytes(range(256)) * 64, "not valid JSON"),
    "truncated": (json.dumps(GOOD)[:-7], "not valid JSON"),
    "nan-literal": ('[{"title": "T", "context": "c", "questions": [], "x": NaN}]', "NaN"),
    "not-a-list": ('{"title": "T"}', "non-empty JSON list"),
    "empty-list": ("[]", "non-empty JSON list"),
    "record-not-object": ("[1, 2, 3]", "record 0"),
    "missing-questions": ('[{"title": "T", "context": "c"}]', "record 0"),
    "question-not-string": ('[{"title": "T", "context": "c", "questions": [{"question": 7, "answer": "a"}]}]',
                            "record 0"),
    "no-questions": ('[{"title": "T", "context": "c", "questions": []}]', "questions"),
    "empty-answer": ('[{"title": "T", "context": "c", "questions": [{"question": "Q?", "answer": "  "}]}]',
                     "empty question or answer"),
    "empty-passage": ('[{"title": "T", "context": " ", "questions": [{"question": "Q?", "answer": "a"}]}]',
                      "passage is empty"),
    "2MB-passage": (json.dumps([{**GOOD[0], "context": "word " * 400_000}]), "characters, over"),
    "second-record-bad": (json.dumps([GOOD[0], {**GOOD[0], "title": None}]), "record 1"),
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_hostile_data_file(case, tmp_path):
    data, reason = DATA_CASES[case]
    res, store = run_with_data(tmp_path, data)
    assert_refused(res, 65, "task.data", str(tmp_path / "data.json"), reason)
    assert nothing_planned(store)


def test_data_file_that_is_a_folder_or_missing(tmp_path):
    for n, path in enumerate((tmp_path, tmp_path / "absent.json")):
        res = seal("run", "--set", f"store={tmp_path}/s{n}", "--set", f"task.data={path}",
                   "--set", f"model.base={TINY}")
        assert_refused(res, 2, "task.data", str(path))


def init(tmp_path: Path, *args: str) -> object:
    return seal("init", "--run", f"{tmp_path}/store/h", *args)


def run_config(tmp_path: Path, *args: str) -> object:
    """`seal run` on a config whose store is tmp_path/store: a refused config writes nothing there."""
    return seal("run", *args, "--set", f"model.base={TINY}")


CONFIG_CASES = {  # --set overrides on the default config -> the key the error must name
    "billion-edits": (["edits_per_context=1000000000"], "edits_per_context"),
    "round-too-big": (["contexts_per_round=50000", "edits_per_context=1000"], "candidates per round"),
    "inf-lr": (["inner.lr=.inf"], "inner.lr"),
    "nan-lr": (["mstep.lr=.nan"], "mstep.lr"),
    "negative-temperature": (["sampling.temperature=-1"], "sampling.temperature"),
    "zero-rounds": (["rounds=0"], "rounds"),
    "huge-window": (["model.max_length=1000000000"], "model.max_length"),
    "huge-fits": (["inner.fits=100000"], "inner.fits"),
    "huge-shard": (["shards.adapt_size=10000000"], "shards.adapt_size"),
    "huge-tokens": (["sampling.max_new_tokens=999999999"], "sampling.max_new_tokens"),
    "s3-without-bucket": (["store=s3://"], "store"),
    "unknown-key": (["inner.lrr=1"], "inner.lrr"),
    "5000-digit-seed": (["seed=" + "9" * 5000], "seed"),
    "string-for-int": (["rounds=two"], "rounds"),
    "bool-for-section": (["inner=true"], "inner"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_hostile_config_value(case, tmp_path):
    overrides, key = CONFIG_CASES[case]
    config = tmp_path / "c.yaml"
    config.write_text(f"rounds: 1\nstore: {tmp_path}/store\n")
    res = run_config(tmp_path, str(config), *[a for o in overrides for a in ("--set", o)])
    assert_refused(res, 2, key)
    assert not (tmp_path / "store").exists()


CONFIG_FILES = {  # file content -> what the error says
    "binary": (bytes(range(256)) * 16, "not UTF-8"),
    "deep-yaml": ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    "deep-yaml-block": ("".join(" " * i + f"k{i}:\n" for i in range(1200)), "nested too deeply"),
    "billion-laughs": ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, n in zip("abcdefgh", "bcdefghi", strict=True)) + "rounds: 1\n", "expands to over"),
    "list-not-mapping": ("- rounds\n- 1\n", "must hold a mapping"),
    "bad-yaml": ("rounds: [1\n", "not valid YAML"),
    "huge-number": ("rounds: " + "9" * 5000 + "\n", "bad number"),
    "huge-file": ("# " + "x" * (2 << 20) + "\n", "is over"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_FILES))
def test_hostile_config_file(case, tmp_path):
    content, reason = CONFIG_FILES[case]
    config = tmp_path / "c.yaml"
    config.write_bytes(content if isinstance(content, bytes) else content.encode())
    res = init(tmp_path, "--config", str(config))
    assert_refused(res, 2, reason)
    assert not (tmp_path / "store").exists()


def test_hostile_inline_json_config(tmp_path):
    res = init(tmp_path, "--config", '{"a": ' + "[" * 20_000 + "]" * 20_000 + "}")
    assert_refused(res, 2, "--config")


# --- property-based: arbitrary shapes never escape as anything but a one-line DataError/ConfigError

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["title", "context", "questions", "question", "answer", "x"]) | st.text(max_size=5),
        inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(JSON)
def test_any_json_shape_is_valid_records_or_one_data_error(data):
    try:
        records = validate_records(data, "x.json")
    except DataError as e:
        assert "\n" not in str(e) and "task.data x.json" in str(e)
        return
    for rec in records:  # what is accepted is what every later stage relies on
        assert rec["context"].strip() and len(rec["context"]) <= MAX_PASSAGE_CHARS
        assert rec["questions"] and all(q["answer"].strip() for q in rec["questions"])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_parse_as_json_or_one_data_error(raw):
    try:
        parse_json(raw, "obj.json")
    except DataError as e:
        assert "\n" not in str(e) and "obj.json" in str(e)


KEYS = [line.split(" ", 1)[0] for line in describe_fields()]
VALUES = (st.integers(min_value=-(10**12), max_value=10**12) | st.floats() | st.booleans()
          | st.text(max_size=12) | st.sampled_from(["1e400", "-.inf", ".nan", "[]", "{}", "null", "~", "9" * 40]))


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(KEYS), VALUES)
def test_any_value_for_any_key_is_a_bounded_config_or_one_config_error(key, value):
    text = value if isinstance(value, str) else json.dumps(value) if not isinstance(value, float) else repr(value)
    try:
        cfg = load_config(None, [f"{key}={text}"])
    except ConfigError as e:
        assert "\n" not in str(e)
        return
    assert cfg.contexts_per_round * cfg.edits_per_context <= MAX_CANDIDATES
    for k, v in _leaves(cfg.model_dump()):  # every accepted number is finite and bounded
        if isinstance(v, float):
            assert math.isfinite(v), k
        if isinstance(v, int) and not isinstance(v, bool):
            assert abs(v) < 2**63, k
    RunConfig.model_validate(cfg.model_dump())  # and round-trips


def _leaves(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, f"{prefix}{k}.")
    elif isinstance(obj, list):
        for v in obj:
            yield from _leaves(v, prefix)
    else:
        yield prefix, obj


EVAL_SIZES = {  # an evaluation command's size flags beyond the config's bounds on K and F
    "eval-arc-edits": (["eval-arc", "configs/arc-demo-cpu.yaml", "--rows", "untrained", "--edits", "1000000000"],
                       "--edits 1000000000: at most 1024"),
    "eval-knowledge-edits": (["eval-knowledge", "configs/world-demo.yaml", "--policy", "base", "--plan-only",
                              "--edits", "1000000000"], "--edits 1000000000: at most 1024"),
    "eval-knowledge-fits": (["eval-knowledge", "configs/world-demo.yaml", "--policy", "base", "--plan-only",
                             "--fits", "100000"], "--fits 100000: at most 64"),
}


@pytest.mark.parametrize("case", sorted(EVAL_SIZES))
def test_evaluation_sizes_are_bounded(case, tmp_path):
    argv, message = EVAL_SIZES[case]
    out = tmp_path / "eval"
    if argv[0] == "eval-knowledge":
        argv = [*argv, "--out", str(out), "--passages", "world:seed=0,split=heldout"]
    res = seal(*argv, cwd=REPO)
    assert_refused(res, 2, message)
    assert not out.exists() or not any(out.iterdir())  # nothing planned
