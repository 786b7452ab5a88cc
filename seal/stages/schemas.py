"""Typed schemas of every object a run's store holds: run.json, plan.json, edit, score and kept
rows, policy.json and summary.json. Every reader in seal/stages/runs.py validates what it reads
through one of these, so a damaged or hand-edited object ends in one line naming the object and
the field (exit 65), never a KeyError far away.

Rows allow extra fields (tasks add their own, e.g. an ARC row's "job"); the fields listed here
are the ones seal reads, with their types, and every float must be finite.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from seal.errors import DataError

Finite = Annotated[float, Field(allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0)]
Pair = Annotated[list[Count], Field(min_length=2, max_length=2)]


class _Object(BaseModel):
    # strict: "3" is not 3 and 1 is not true; extra fields are kept (newer writers may add some).
    model_config = ConfigDict(strict=True, extra="allow")


class RunMeta(_Object):
    config: dict[str, Any]
    fingerprint: str
    version: str
    created: str
    status: str
    message: str = ""
    updated: str = ""


class Plan(_Object):
    round: Count
    contexts: list[Count]
    sample_shards: list[list[Count]]
    adapt_shards: list[list[Pair]]


class EditRow(_Object):
    context: Count
    k: Count
    prompt: str
    text: str
    tokens: Count
    seed: Count
    gen_s: Finite = 0.0


class ScoreRow(_Object):
    context: Count
    k: Count
    rewards: list[Finite]
    reward: Finite
    baseline: Finite
    fit_s: list[Finite]
    score_s: list[Finite]
    skip: str | None = None


class KeptRow(_Object):
    context: Count
    k: Count
    prompt: str
    completion: str
    reward: Finite
    baseline: Finite


class PolicyMeta(_Object):
    adapter: bool
    examples: Count
    init: str


class Seconds(_Object):
    sample: Finite
    adapt: Finite
    improve: Finite


class Summary(_Object):
    round: Count
    contexts: Count
    candidates: Count
    mean_reward: Finite
    max_reward: Finite
    mean_baseline: Finite
    kept: Count
    skipped: Count = 0
    mstep: dict[str, Any]
    tokens: Count
    seconds: Seconds


M = TypeVar("M", bound=BaseModel)


def check(schema: type[M], obj: Any, where: str) -> Any:
    """`obj` unchanged if it fits `schema`; else a DataError naming `where` and the first bad field."""
    try:
        schema.model_validate(obj)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise DataError(f"damaged: {where}: field '{field}': {first['msg']}") from None
    return obj
