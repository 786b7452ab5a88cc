"""Knowledge task: records, prompts, inner-loop data, SQuAD grading (the LLM judge: tests/integration/test_judge.py)."""

import json

import pytest

from seal.config import TaskConfig
from seal.errors import ConfigError, DataError
from seal.tasks import knowledge as kn

REC = {"title": "Warsaw", "context": "Warsaw is the capital of Poland.",
       "questions": [{"question": "What is Warsaw?", "answer": "the capital of Poland"}]}


def test_builtin_records_are_valid_and_attributed():
    recs = kn.load_records("builtin:squad-sample")
    assert len(recs) == 8
    assert all(r["questions"] for r in recs)


def test_missing_and_malformed_data(tmp_path):
    with pytest.raises(ConfigError, match="task.data file not found"):
        kn.load_records(str(tmp_path / "nope.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        kn.load_records(str(tmp_path / "bad.json"))
    (tmp_path / "shape.json").write_text(json.dumps([{"title": "x", "context": "y"}]))
    with pytest.raises(DataError, match="record 0 needs"):
        kn.load_records(str(tmp_path / "shape.json"))
    with pytest.raises(ConfigError, match="no such built-in"):
        kn.load_records("builtin:nope")


@pytest.mark.parametrize("variant", sorted(kn.PROMPTS))
def test_prompt_variants_contain_the_passage(variant):
    p = kn.edit_prompt(REC, variant)
    assert "Warsaw is the capital of Poland." in p and p.endswith((":\n", "Question 1: "))


def test_training_texts_prefix_title_and_skip_blank_lines():
    edit = "Warsaw is a capital.\n\n  Poland has a capital.  \n"
    assert kn.training_texts(REC, edit, with_passage=False) == [
        "Warsaw\nWarsaw is a capital.", "Warsaw\nPoland has a capital."]
    assert kn.training_texts(REC, edit)[-1] == "Warsaw\nWarsaw is the capital of Poland."
    assert kn.question_prompt("Warsaw", "What is Warsaw?", "topic") == "Topic: Warsaw\nWhat is Warsaw?\n"


def test_squad_normalisation_em_and_f1():
    assert kn.normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert kn.exact_match("the Denver Broncos.", "Denver Broncos") == 1.0
    assert kn.exact_match("Broncos", "Denver Broncos") == 0.0
    assert kn.f1_score("Broncos", "Denver Broncos") == pytest.approx(2 / 3)
    assert kn.f1_score("", "Denver") == 0.0
    assert kn.first_line("\n  Paris \nmore text") == "Paris"


def test_grade_dispatch():
    assert kn.grade(TaskConfig(grader="exact_match"), "q", "Paris", "paris") == 1.0
    assert kn.grade(TaskConfig(grader="f1"), "q", "New York City", "New York") == pytest.approx(0.8)
