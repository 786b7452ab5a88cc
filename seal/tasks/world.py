"""A small synthetic world of invented people, for a CPU-scale demonstration that SEAL learns.

Each entity is an invented name (two or three syllables) with four attributes: a job, a home
town, a favourite colour and a pet. A passage states the four facts in sentences drawn from
four templates per fact (each fact ends its sentence; facts come in a fixed order); its questions
ask for each fact in one fixed form ("What is the job of Kadorin?"), answered by one word. Records are in SQuAD form
(`{title, context, questions: [{question, answer}]}`), so the knowledge task consumes them
unchanged.

Entities are split three ways, with disjoint names, so nothing about one split's facts appears
in another's text:

- `warmstart`: what the base model is trained on from scratch (seal.models.warmstart): its passages,
  its questions in the probe format, and self-edits of every style written for it;
- `train`: the passages ReSTEM plays on (their facts are unknown to the base model, so the
  reward measures what a LoRA fit on the self-edit taught it);
- `heldout`: evaluation only (seal.evaluation.world).

The names left over (in no split) serve as throwaway entities with freshly drawn facts: the warm
start teaches the policy its styles on them, so that writing an edit means copying facts from the
passage, not recalling them (`scratch_record`).

The self-edit styles the warm-started policy learns to write, in equal shares, are defined here
too (`write_edit`), together with the simple heuristic that tells them apart (`edit_style`):

- `qa`: each fact restated as its question on one line and the answer on the next;
- `paraphrase`: each fact restated as a declarative sentence (a different template);
- `drift`: fluent sentences of the world's language that say nothing about the entity.

Nothing here says which style is useful: that comes only from the inner loop and grading.

    `seal.tasks.knowledge.load_records("world:seed=0,split=heldout")` returns one split.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from seal.errors import ConfigError

WORLD_PREFIX = "world:"

FIRST = ["Ka", "Lo", "Mi", "Ta", "Ve", "Ri", "So", "Du", "Ne", "Pa", "Gi", "Fo", "Ba", "Ze", "Hu", "Jo"]
MIDDLE = ["", "do", "la", "mi", "ru"]
LAST = ["rin", "mak", "tel", "dor", "vas", "lim", "pek", "sul", "nat", "bor", "gim", "fen", "zol",
        "rup", "kas", "wen"]

ATTRIBUTES: dict[str, list[str]] = {
    "job": ["baker", "farmer", "sailor", "painter", "doctor", "teacher", "miner", "weaver", "hunter",
            "singer", "potter", "tailor"],
    "town": ["Brill", "Dunmere", "Ostek", "Varrow", "Pelmor", "Quenby", "Halvik", "Smeed", "Torrin",
             "Wexley"],
    "color": ["red", "blue", "green", "yellow", "purple", "orange", "white", "black", "gray", "pink"],
    "pet": ["cat", "dog", "horse", "goat", "owl", "fox", "crow", "rabbit", "turtle", "parrot"],
}

QUESTIONS: dict[str, str] = {
    "job": "What is the job of {name}?",
    "town": "Where does {name} live?",
    "color": "What is the favorite color of {name}?",
    "pet": "Which animal does {name} keep?",
}

# Passage sentences: several forms per fact, so a passage never reads like its questions. Each
# fact comes in a fixed order and ends its sentence: a tiny model learns to find it in minutes.
FACT_TEMPLATES: dict[str, list[str]] = {
    "job": ["{name} works as a {v}.", "By trade, {name} is a {v}.", "{name} earns a living as a {v}.",
            "Everyone knows {name} as a {v}."],
    "town": ["{name} lives in {v}.", "The home of {name} is the town of {v}.", "{name} has a house in {v}.",
             "The town where {name} lives is {v}."],
    "color": ["The favorite color of {name} is {v}.", "The color {name} likes best is {v}.",
              "{name} loves the color {v}.", "{name} always wears something {v}."],
    "pet": ["{name} keeps a {v}.", "{name} has a pet {v}.", "The animal living with {name} is a {v}.",
            "{name} takes care of a {v}."],
}

# Drift: sentences in the world's language that state nothing about the passage's entity.
DRIFT_TEMPLATES = [
    "The market in {town} is busy in the morning.",
    "A {pet} is a common animal in {town}.",
    "Many people like the color {color}.",
    "A {job} often works long days.",
    "The road to {town} is long and quiet.",
    "In {town} the houses are painted {color}.",
    "Every {job} in {town} knows the old songs.",
    "The weather was mild that year.",
]

STYLES = ("qa", "paraphrase", "drift")
SPLITS = ("warmstart", "train", "heldout")


@dataclass(frozen=True)
class WorldSpec:
    """How a world is generated; every field has a default, so 'world:seed=0' is a whole world."""

    seed: int = 0
    warmstart: int = 240  # entities the base model is trained on
    train: int = 64  # entities whose passages ReSTEM plays on
    heldout: int = 24  # entities for evaluation only


def parse_world_spec(spec: str) -> tuple[WorldSpec, dict[str, str]]:
    """'world:seed=0,split=train' -> (WorldSpec(seed=0), {'split': 'train'}).

    Integer keys are WorldSpec fields; any other key is returned for the caller to check.
    """
    body = spec[len(WORLD_PREFIX):] if spec.startswith(WORLD_PREFIX) else spec
    ints: dict[str, int] = {}
    extra: dict[str, str] = {}
    fields = WorldSpec.__dataclass_fields__
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        if key in fields:
            if not value.isdigit():
                raise ConfigError(f"'{spec}': {key} must be a non-negative integer, got '{value}'")
            ints[key] = int(value)
        else:
            extra[key] = value
    return WorldSpec(**ints), extra


def entity_names(spec: WorldSpec) -> dict[str, list[str]]:
    """Distinct invented names for each split, drawn from one seeded shuffle."""
    names = sorted({f + m + last for f in FIRST for m in MIDDLE for last in LAST})
    # No name may hide inside another ("Parup" in "Parupek"): a leak check by substring, and the
    # model's reading of a name, would both confuse them.
    names = [n for n in names if not any(n != o and (n in o or o in n) for o in names)]
    need = spec.warmstart + spec.train + spec.heldout
    if need > len(names):
        raise ConfigError(f"world: {need} entities asked for, but only {len(names)} names exist")
    random.Random(spec.seed).shuffle(names)
    out, start = {}, 0
    for split in SPLITS:
        n = getattr(spec, split)
        out[split] = names[start:start + n]
        start += n
    out["scratch"] = names[start:]  # in no split: the warm start's throwaway entities (see below)
    return out


def scratch_record(spec: WorldSpec, rng: random.Random) -> dict[str, Any]:
    """A throwaway entity: a name that is in no split, with freshly drawn facts. The warm start
    teaches the policy on these, so it must copy facts from the passage (it cannot recall them)."""
    return make_record(rng.choice(_scratch_names(spec)), rng)


_SCRATCH: dict[WorldSpec, list[str]] = {}


def _scratch_names(spec: WorldSpec) -> list[str]:
    if spec not in _SCRATCH:
        _SCRATCH[spec] = entity_names(spec)["scratch"]
    return _SCRATCH[spec]


def make_record(name: str, rng: random.Random) -> dict[str, Any]:
    """One entity's passage record in SQuAD form, with its facts kept under 'facts'."""
    facts = {attr: rng.choice(values) for attr, values in ATTRIBUTES.items()}
    sentences = [rng.choice(FACT_TEMPLATES[a]).format(name=name, v=facts[a]) for a in facts]
    questions = [{"question": QUESTIONS[a].format(name=name), "answer": facts[a]} for a in ATTRIBUTES]
    return {"title": name, "context": " ".join(sentences), "questions": questions, "facts": facts}


def generate(spec: WorldSpec) -> dict[str, list[dict[str, Any]]]:
    """Every split's records; the same spec always gives the same world."""
    rng = random.Random(spec.seed * 7919 + 1)
    names = entity_names(spec)
    return {split: [make_record(n, rng) for n in names[split]] for split in SPLITS}


def load_split(source: str) -> list[dict[str, Any]]:
    """Records for a 'world:seed=S,split=NAME' data source (the split defaults to 'train')."""
    spec, extra = parse_world_spec(source)
    split = extra.pop("split", "train")
    if extra:
        raise ConfigError(f"task.data {source}: unknown key(s) {', '.join(extra)} (allowed: "
                          f"{', '.join(WorldSpec.__dataclass_fields__)}, split)")
    if split not in SPLITS:
        raise ConfigError(f"task.data {source}: split must be one of {', '.join(SPLITS)}")
    return generate(spec)[split]


# --- Self-edit styles


def write_edit(record: dict[str, Any], style: str, rng: random.Random) -> str:
    """A self-edit of the given style for a passage, one item per line (the warm-start targets)."""
    name, facts = record["title"], record["facts"]
    attrs = list(facts)  # the passage's order: line k of an edit goes with sentence k
    if style == "qa":
        # The answer line starts with a space so the answer is the very token the passage used
        # (byte-level BPE tokenizes " tailor" and "tailor" differently): copying stays copying.
        lines = [f"{QUESTIONS[a].format(name=name)}\n {facts[a]}" for a in attrs]
    elif style == "paraphrase":
        lines = [rng.choice(FACT_TEMPLATES[a]).format(name=name, v=facts[a]) for a in attrs]
    elif style == "drift":
        picks = rng.sample(DRIFT_TEMPLATES, 4)
        lines = [t.format(**{a: rng.choice(v) for a, v in ATTRIBUTES.items()}) for t in picks]
    else:
        raise ValueError(f"unknown edit style {style!r}")
    return "\n".join(lines)


def edit_style(record: dict[str, Any], edit: str) -> str:
    """Classify a self-edit by style, by a documented heuristic over its non-empty lines:

    - a *question-answer pair* is a line ending in '?' followed by a line that does not;
    - a line is *about the entity* if it names the passage's title;
    - `qa` if pairs cover at least half the lines; else `paraphrase` if at least half the lines
      are about the entity; else `drift` (including empty edits).
    """
    lines = [line.strip() for line in edit.splitlines() if line.strip()]
    if not lines:
        return "drift"
    pairs = sum(a.endswith("?") and not b.endswith("?") for a, b in zip(lines, lines[1:], strict=False))
    about = sum(record["title"] in line for line in lines)
    if 4 * pairs >= len(lines):
        return "qa"
    if 2 * about >= len(lines):
        return "paraphrase"
    return "drift"


def all_text(records: list[dict[str, Any]]) -> str:
    """Every string of some records (titles, passages, questions, answers), for leak checks."""
    parts = []
    for r in records:
        parts += [r["title"], r["context"]]
        parts += [q["question"] + " " + q["answer"] for q in r["questions"]]
    return "\n".join(parts)
