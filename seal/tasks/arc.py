"""Few-shot ARC: self-edits that pick augmentations and training settings, test-time training,
voted predictions.

A context is one (task, test input) of an ARC-AGI task file. The policy reads the task's
demonstrations and writes a self-edit: a JSON object such as

    {"augmentations": ["basic", "chain"], "loss": "outputs", "lr": 0.0001, "epochs": 2}

The inner loop builds test-time-training (TTT) data from the demonstrations alone (leave-one-out
and leave-two-out puzzles, augmented by the chosen transform families, colour permutations and
demonstration shuffles), fits a LoRA with the edit's learning rate and epochs, and answers the test
input greedily under several invertible views (rotations, flips...). Answers are mapped back,
voted, and the reward is 1 if the solution is among the top `attempts` (pass@2 by default).

An edit that cannot be parsed, or asks for more compute than the cap, is not trained: its reward
is 0 and the reason is recorded in its score row (the paper does the same; it teaches the policy
to write well-formed, affordable edits).
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from typing import Any

from seal.errors import ConfigError, DataError
from seal.generation.params import GenParams
from seal.inner.train import Example
from seal.seeds import derive_seed
from seal.store import read_json_file
from seal.tasks.arc_augment import FAMILIES, IDENTITY, TRANSFORMS, Transform, random_color_perm, recolor
from seal.tasks.arc_grids import Grid, cells, check_grid, grid_to_text, parse_grid, side
from seal.tasks.base import InnerJob

log = logging.getLogger(__name__)

Pair = dict[str, Grid]  # {"input": grid, "output": grid}

# --- data: ARC-AGI JSON task files


def _builtin(name: str, kind: str) -> Any:
    try:
        raw = (resources.files("seal.data") / f"{name}-{kind}.json").read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"task.data builtin:{name}: no such built-in ARC task set (try builtin:arc-demo)") from None
    return json.loads(raw)


def load_tasks(challenges: str, solutions: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(challenges, solutions) from paths/URIs, or both from 'builtin:NAME' (solutions empty)."""
    if challenges.startswith("builtin:"):
        name = challenges[len("builtin:"):]
        if solutions:
            raise ConfigError("task.arc.solutions must be empty with a builtin: task set (it ships its solutions)")
        return _builtin(name, "challenges"), _builtin(name, "solutions")
    if not solutions:
        raise ConfigError(f"task.arc.solutions is empty: give the solutions file that goes with {challenges}")
    return read_json_file(challenges, "task.data (ARC challenges)"), read_json_file(solutions, "task.arc.solutions")


def validate_tasks(challenges: Any, solutions: Any, source: str) -> None:
    """DataError naming the task and field at fault; grids must be valid ARC grids."""
    if not isinstance(challenges, dict) or not challenges:
        raise DataError(f"{source}: expected a JSON object {{task_id: {{'train': [...], 'test': [...]}}}}")
    if not isinstance(solutions, dict):
        raise DataError(f"{source} solutions: expected a JSON object {{task_id: [grid, ...]}}")
    for tid, task in challenges.items():
        where = f"{source}: task {tid}"
        if not (isinstance(task, dict) and isinstance(task.get("train"), list) and isinstance(task.get("test"), list)):
            raise DataError(f"{where} needs 'train' and 'test' lists")
        if len(task["train"]) < 2:
            raise DataError(f"{where} has {len(task['train'])} demonstrations: test-time training needs at least 2")
        for i, pair in enumerate(task["train"]):
            for key in ("input", "output"):
                reason = check_grid(pair.get(key) if isinstance(pair, dict) else None)
                if reason:
                    raise DataError(f"{where} train[{i}].{key}: {reason}")
        for i, pair in enumerate(task["test"]):
            reason = check_grid(pair.get("input") if isinstance(pair, dict) else None)
            if reason:
                raise DataError(f"{where} test[{i}].input: {reason}")
        sols = solutions.get(tid)
        if not isinstance(sols, list) or len(sols) != len(task["test"]):
            raise DataError(f"{where}: the solutions file needs a list of {len(task['test'])} grid(s) for it")
        for i, grid in enumerate(sols):
            reason = check_grid(grid)
            if reason:
                raise DataError(f"{where} solution {i}: {reason}")


def contexts_from(challenges: dict[str, Any], solutions: dict[str, Any]) -> list[dict[str, Any]]:
    """One context per (task, test input), in task-id order (context ids are list indices)."""
    out = []
    for tid in sorted(challenges):
        task = challenges[tid]
        for i, test in enumerate(task["test"]):
            out.append({
                "id": f"{tid}/{i}", "task": tid, "test_index": i,
                "train": [{"input": p["input"], "output": p["output"]} for p in task["train"]],
                "test_input": test["input"], "solution": solutions[tid][i],
            })
    return out


# --- prompts

PUZZLE_HEADER = "Each input grid is turned into its output grid by the same rule.\n\n"


def puzzle_text(demos: list[Pair], query: Grid) -> str:
    """Demonstrations then the query input; the answer grid follows 'Output:' on the next line."""
    blocks = [f"Input:\n{grid_to_text(p['input'])}\nOutput:\n{grid_to_text(p['output'])}\n" for p in demos]
    return PUZZLE_HEADER + "\n".join(blocks) + f"\nInput:\n{grid_to_text(query)}\nOutput:\n"


EXAMPLE_EDIT = '{"augmentations": ["basic"], "loss": "outputs", "lr": 0.0001, "epochs": 2}'

EDIT_PROMPT = (
    "You are choosing how to train a model to solve a grid puzzle from its demonstrations.\n\n"
    "{demos}\n"
    "Choose data augmentations and training settings. Reply with one JSON object with exactly "
    "these keys:\n"
    '"augmentations": a list drawn from "basic" (rotations, flips, transposes), "size" '
    '(up-scaling), "chain" (a basic transform then up-scaling), "repeat" (tiling); may be empty\n'
    '"loss": "all" (train on every token) or "outputs" (train on the answer grid only)\n'
    '"lr": the learning rate, from {lr_min:g} to {lr_max:g}\n'
    '"epochs": passes over the data, a whole number from 1 to {max_epochs}\n'
    "For example: {example}\n\n"
    "Self-edit:\n"
)


def edit_prompt(record: dict[str, Any], arc: Any) -> str:
    demos = "\n".join(
        f"Input:\n{grid_to_text(p['input'])}\nOutput:\n{grid_to_text(p['output'])}\n" for p in record["train"]
    )
    return EDIT_PROMPT.format(demos=demos, lr_min=arc.lr_min, lr_max=arc.lr_max, max_epochs=arc.max_epochs,
                              example=EXAMPLE_EDIT)


# --- the self-edit: strict parsing, with clamps recorded

EDIT_KEYS = ("augmentations", "loss", "lr", "epochs")


@dataclass(frozen=True)
class Edit:
    augmentations: tuple[str, ...]
    loss: str  # "all" | "outputs"
    lr: float
    epochs: int


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ValueError(f"duplicate key(s) {', '.join(dup)}")
    return dict(pairs)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def parse_edit(text: str, arc: Any) -> tuple[Edit | None, str, list[str]]:
    """(edit, '', notes) or (None, reason, notes). Never raises, never evaluates code.

    The edit is the first JSON object of the text: only whitespace (or a ```json fence) may come
    before it; what follows it is ignored (a sampled edit runs on until EOS or its token budget).
    Every key is required and no other is allowed. Out-of-range lr and too many epochs are
    clamped, with a note; wrong types, unknown values and epochs < 1 reject the edit.
    """
    notes: list[str] = []
    s = text.strip() if isinstance(text, str) else ""
    if s.startswith("```"):
        s = s.split("\n", 1)[1].lstrip() if "\n" in s else ""
    if not s.startswith("{"):
        return None, "edit does not start with a JSON object", notes
    try:
        obj, _ = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys).raw_decode(s)
    except json.JSONDecodeError as e:
        return None, f"edit is not valid JSON: {e.msg} at char {e.pos}", notes
    except (ValueError, RecursionError) as e:
        return None, f"edit is not valid JSON: {e}", notes
    if not isinstance(obj, dict):
        return None, "edit must be a JSON object", notes
    unknown = sorted(set(obj) - set(EDIT_KEYS))
    if unknown:
        return None, f"unknown key(s) {', '.join(unknown)} (allowed: {', '.join(EDIT_KEYS)})", notes
    missing = [k for k in EDIT_KEYS if k not in obj]
    if missing:
        return None, f"missing key(s) {', '.join(missing)}", notes

    augs = obj["augmentations"]
    if not isinstance(augs, list) or not all(isinstance(a, str) for a in augs):
        return None, "augmentations must be a list of strings", notes
    bad = [a for a in augs if a not in FAMILIES]
    if bad:
        return None, f"unknown augmentation family {bad[0]!r} (allowed: {', '.join(FAMILIES)})", notes
    if len(set(augs)) != len(augs):
        notes.append("duplicate augmentation families dropped")
    # Canonical family order, so the same choice always builds the same data.
    families = tuple(f for f in FAMILIES if f in augs)

    loss = obj["loss"]
    if loss not in ("all", "outputs"):
        return None, f"loss must be \"all\" or \"outputs\", not {loss!r}", notes

    lr = obj["lr"]
    if not _is_number(lr) or not math.isfinite(lr) or lr <= 0:
        return None, f"lr must be a positive number, not {lr!r}", notes
    if not arc.lr_min <= lr <= arc.lr_max:
        clamped = min(max(float(lr), arc.lr_min), arc.lr_max)
        notes.append(f"lr {lr:g} clamped to {clamped:g}")
        lr = clamped

    epochs = obj["epochs"]
    if not _is_number(epochs) or not math.isfinite(epochs) or epochs != int(epochs):
        return None, f"epochs must be a whole number, not {epochs!r}", notes
    epochs = int(epochs)
    if epochs < 1:
        return None, f"epochs must be at least 1, not {epochs}", notes
    if epochs > arc.max_epochs:
        notes.append(f"epochs {epochs} clamped to {arc.max_epochs}")
        epochs = arc.max_epochs
    return Edit(families, loss, float(lr), epochs), "", notes


# --- test-time training data


def leave_out_splits(pairs: list[Pair], leave_two_out: bool) -> list[tuple[list[Pair], Pair]]:
    """(demonstrations, query) puzzles made from the task's own demonstrations.

    Leave-one-out: each demonstration in turn is the query, the others its demonstrations.
    Leave-two-out (tasks with >= 3 demonstrations): each demonstration i is the query again, with
    its cyclic neighbour i+1 also held out, so the model sees puzzles with one demonstration
    fewer (TTT, Akyurek et al. 2024). Why one neighbour and not every pair: all n(n-1) ordered
    pairs would make a 6-demonstration task's data 6x larger and push nearly every edit on it
    over the compute cap; n puzzles keep the data linear in n.
    """
    n = len(pairs)
    splits = [([p for j, p in enumerate(pairs) if j != i], pairs[i]) for i in range(n)]
    if leave_two_out and n >= 3:
        splits += [([p for k, p in enumerate(pairs) if k not in (i, (i + 1) % n)], pairs[i]) for i in range(n)]
    return splits


def _map_pair(pair: Pair, f: Any) -> Pair:
    return {"input": f(pair["input"]), "output": f(pair["output"])}


def edit_transforms(edit: Edit) -> list[Transform]:
    """Identity first (the untouched puzzles always train), then each chosen family's transforms."""
    return [IDENTITY, *(t for fam in edit.augmentations for t in FAMILIES[fam])]


def build_ttt_examples(record: dict[str, Any], edit: Edit, arc: Any, seed: int) -> tuple[list[Any], dict[str, Any]]:
    """The inner loop's training examples for one edit, and counts of what the caps removed.

    `built` counts the examples the edit asked for after the grid-size caps and before the
    example-count cap: the compute cap is judged on it, so an edit cannot dodge the cap by asking
    for more data than the hardware guard lets through.
    """
    rng = random.Random(seed)
    puzzles: list[tuple[list[Pair], Pair]] = []
    dropped = 0
    for demos, query in leave_out_splits(record["train"], arc.leave_two_out):
        for t in edit_transforms(edit):
            tdemos = [_map_pair(p, t.forward) for p in demos]
            tquery = _map_pair(query, t.forward)
            grids = [g for p in [*tdemos, tquery] for g in (p["input"], p["output"])]
            if max(side(g) for g in grids) > arc.max_grid_side or sum(cells(g) for g in grids) > arc.max_example_cells:
                dropped += 1  # e.g. a 20x20 grid up-scaled to 40x40: past ARC's size, too long to train
                continue
            variants = [(tdemos, tquery)]
            for _ in range(arc.color_permutations):
                perm = random_color_perm(rng)
                variants.append(([_map_pair(p, lambda g, m=perm: recolor(g, m)) for p in tdemos],
                                 _map_pair(tquery, lambda g, m=perm: recolor(g, m))))
            for vdemos, vquery in variants:
                if arc.shuffle_demos:
                    vdemos = list(vdemos)
                    rng.shuffle(vdemos)  # the rule cannot depend on demonstration order
                puzzles.append((vdemos, vquery))
    built = len(puzzles)
    if built > arc.max_examples:
        keep = sorted(rng.sample(range(built), arc.max_examples))
        puzzles = [puzzles[i] for i in keep]
    examples = []
    for demos, query in puzzles:
        prompt, answer = puzzle_text(demos, query["input"]), grid_to_text(query["output"])
        # "outputs": loss on the answer grid only; "all": on every token, demonstrations included.
        if edit.loss == "outputs":
            examples.append(Example(text=answer, prompt=prompt))
        else:
            examples.append(Example(text=prompt + answer))
    return examples, {"built": built, "dropped_by_size": dropped, "used": len(examples)}


# --- voting


def vote(record: dict[str, Any], outputs: list[str], view_names: list[str], attempts: int) -> dict[str, Any]:
    """Parse each view's answer, map it back through the view's inverse, and count votes.

    Candidates rank by votes, ties by the first view that produced them (identity first), so the
    result depends only on the outputs. Unparseable answers cast no vote.
    """
    counts: Counter[str] = Counter()
    first_seen: dict[str, int] = {}
    reasons = []
    for i, (name, out) in enumerate(zip(view_names, outputs, strict=True)):
        grid, reason = parse_grid(out)
        if grid is not None:
            back = TRANSFORMS[name].inverse(grid)
            if back is None:  # cannot happen for dihedral views; kept for safety
                reason = f"{name}: answer outside the view's image"
            else:
                key = grid_to_text(back)
                counts[key] += 1
                first_seen.setdefault(key, i)
                continue
        reasons.append(f"{name}: {reason}")
    ranked = sorted(counts, key=lambda k: (-counts[k], first_seen[k]))
    top = ranked[:attempts]
    solution = grid_to_text(record["solution"])
    return {
        "score": 1.0 if solution in top else 0.0,
        "pass1": 1.0 if top[:1] == [solution] else 0.0,
        "answers": top,
        "votes": [counts[k] for k in top],
        "parsed": sum(counts.values()),
        "unparsed": reasons,
    }


# --- The task interface used by the stages (see seal/tasks/__init__.py)


def load_contexts(task_cfg: Any) -> list[dict[str, Any]]:
    challenges, solutions = load_tasks(task_cfg.data, task_cfg.arc.solutions)
    validate_tasks(challenges, solutions, task_cfg.data)
    records = contexts_from(challenges, solutions)
    # A rough check that answers fit the greedy budget (about 2 tokens per cell: digit + space).
    need = max(2 * cells(p["output"]) for r in records for p in r["train"])
    if need > task_cfg.answer_tokens:
        log.warning("task.answer_tokens=%d may be too few for the largest demonstration output "
                    "(about %d tokens)", task_cfg.answer_tokens, need)
    return records


def context_prompt(record: dict[str, Any], task_cfg: Any) -> str:
    return edit_prompt(record, task_cfg.arc)


def inner_job(record: dict[str, Any], edit: str, task_cfg: Any, inner_cfg: Any) -> InnerJob:
    """Parse the edit, build its TTT data, apply its lr/epochs to the run's LoRA, or refuse."""
    arc = task_cfg.arc
    parsed, problem, notes = parse_edit(edit, arc)
    if parsed is None:
        return InnerJob(examples=[], lora=inner_cfg, skip=f"unparseable edit: {problem}",
                        info={"edit_notes": notes})
    # Data seeds depend on the context and the edit's choices, so equal edits build equal data.
    seed = derive_seed(0, "arc-ttt", record["id"], parsed)
    examples, stats = build_ttt_examples(record, parsed, arc, seed)
    info = {"edit": {"augmentations": list(parsed.augmentations), "loss": parsed.loss, "lr": parsed.lr,
                     "epochs": parsed.epochs}, "edit_notes": notes, "ttt": stats}
    steps = parsed.epochs * stats["built"] / inner_cfg.batch_size
    if steps > arc.compute_cap:
        # The paper's rule: an edit this expensive is not trained, and scores 0.
        return InnerJob(examples=[], lora=inner_cfg, info=info,
                        skip=f"over the compute cap: {parsed.epochs} epochs x {stats['built']} examples / "
                             f"batch {inner_cfg.batch_size} = {steps:g} steps > {arc.compute_cap:g}")
    if not examples:
        return InnerJob(examples=[], lora=inner_cfg, info=info, skip="no training example fits the size caps")
    lora = inner_cfg.model_copy(update={"lr": parsed.lr, "epochs": parsed.epochs})
    return InnerJob(examples=examples, lora=lora, info=info)


def probe_prompts(record: dict[str, Any], task_cfg: Any) -> list[str]:
    """The test puzzle under each voting view (demonstrations and test input transformed alike)."""
    prompts = []
    for name in task_cfg.arc.vote_transforms:
        t = TRANSFORMS[name]
        prompts.append(puzzle_text([_map_pair(p, t.forward) for p in record["train"]], t.forward(record["test_input"])))
    return prompts


def probe_params(task_cfg: Any, batch_size: int) -> Any:
    return GenParams(max_new_tokens=task_cfg.answer_tokens, temperature=0.0, batch_size=batch_size)


def grade_outputs(record: dict[str, Any], outputs: list[str], task_cfg: Any) -> dict[str, Any]:
    if not outputs:
        return {"score": 0.0, "answers": [], "votes": [], "parsed": 0, "unparsed": []}
    return vote(record, outputs, list(task_cfg.arc.vote_transforms), task_cfg.arc.attempts)
