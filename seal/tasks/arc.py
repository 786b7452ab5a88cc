"""Few-shot ARC: self-edits that pick augmentations and training settings, test-time training,
voted predictions, run as the SEAL paper's reference code runs them (each difference from it is
an `task.arc` option, with seal's earlier behaviour kept as the alternative).

A context is one ARC-AGI task (`arc.context: task`; or one (task, test input)). The policy reads
the task's demonstrations and writes a self-edit: a JSON object such as

    {"augmentations": ["basic", "chain"], "loss": "outputs", "lr": 0.0001, "epochs": 2}

The inner loop builds test-time-training (TTT) data from the demonstrations alone (leave-one-out
and leave-two-out puzzles, augmented by the chosen transform families, colour permutations when
some family was chosen, and demonstration shuffles), keeps at most `arc.max_examples` (250) of
them, fits a LoRA with the edit's learning rate and epochs, and answers each test input under the
paper's queries (leave-one-out subsets of the demonstrations and geometric views). Answers are
mapped back and voted hierarchically; the reward is 1 if every test input's solution is among its
top `attempts` (pass@2). Prompts use the model's chat format when its tokenizer has one.

A sampled edit that does not parse is sampled again (up to `arc.edit_attempts`). An edit that
still cannot be parsed, or asks for more compute than the cap (epochs x examples / batch > 375,
examples counted after the truncation to 250), is not trained: its reward is 0 and the reason is
recorded in its score row (it teaches the policy to write well-formed, affordable edits).
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
from seal.tasks.chat import ChatFrame

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


def contexts_from(challenges: dict[str, Any], solutions: dict[str, Any], per: str = "task",
                  only: list[str] | None = None) -> list[dict[str, Any]]:
    """The contexts in task-id order (context ids are list indices): one per task (`per="task"`,
    the paper: every test input is asked, the task counts as solved only if all are), or one per
    (task, test input). `only`: the task ids to keep (empty or None: all)."""
    out = []
    for tid in sorted(challenges):
        if only and tid not in only:
            continue
        task = challenges[tid]
        train = [{"input": p["input"], "output": p["output"]} for p in task["train"]]
        tests = [{"input": t["input"], "solution": solutions[tid][i]} for i, t in enumerate(task["test"])]
        if per == "task":
            out.append({"id": tid, "task": tid, "train": train, "tests": tests})
        else:
            out += [{"id": f"{tid}/{i}", "task": tid, "test_index": i, "train": train, "tests": [t]}
                    for i, t in enumerate(tests)]
    return out


# --- prompts

PUZZLE_HEADER = "Each input grid is turned into its output grid by the same rule.\n\n"
EDIT_SYSTEM = "You are a helpful assistant that provide the correct output for the given task immediately."


def _demo_blocks(demos: list[Pair]) -> str:
    return "\n".join(f"Input:\n{grid_to_text(p['input'])}\nOutput:\n{grid_to_text(p['output'])}\n" for p in demos)


def puzzle_text(demos: list[Pair], query: Grid, chat: ChatFrame | None = None) -> str:
    """Demonstrations then the query input; the answer grid comes next.

    Plain text: the answer follows 'Output:' on the next line. In a chat format (the reference's
    way for Llama-3.2-1B-Instruct): the header and demonstrations are the system message, the
    query input the user message, and the answer is the assistant's reply.
    """
    if chat is None:
        return PUZZLE_HEADER + _demo_blocks(demos) + f"\nInput:\n{grid_to_text(query)}\nOutput:\n"
    return chat.prompt(PUZZLE_HEADER + _demo_blocks(demos), f"Input:\n{grid_to_text(query)}\nOutput:")


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
)
EDIT_CUE = "Self-edit:\n"  # plain text only: in a chat format the assistant header cues the reply


def edit_prompt(record: dict[str, Any], arc: Any) -> str:
    body = EDIT_PROMPT.format(demos=_demo_blocks(record["train"]), lr_min=arc.lr_min, lr_max=arc.lr_max,
                              max_epochs=arc.max_epochs, example=EXAMPLE_EDIT)
    chat = record.get("chat")
    return body + EDIT_CUE if chat is None else chat.prompt(EDIT_SYSTEM, body)


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


def leave_out_splits(pairs: list[Pair], leave_two_out: bool, two_out: str = "all") -> list[tuple[list[Pair], Pair]]:
    """(demonstrations, query) puzzles made from the task's own demonstrations.

    Leave-one-out: each demonstration in turn is the query, the others its demonstrations.
    Leave-two-out (tasks with >= 3 demonstrations): each demonstration i is the query again with
    one more demonstration held out, so the model sees puzzles with one demonstration fewer (TTT,
    Akyurek et al. 2024): every other demonstration j in turn (`two_out="all"`, the paper's
    n(n-1) puzzles; the truncation to `max_examples` keeps the data bounded), or only i's cyclic
    neighbour (`"neighbour"`, n puzzles). The reference also builds leave-two-out puzzles with no
    demonstration at all for 2-demonstration tasks; seal does not.
    """
    n = len(pairs)
    splits = [([p for j, p in enumerate(pairs) if j != i], pairs[i]) for i in range(n)]
    if leave_two_out and n >= 3:
        drops = [(i, j) for i in range(n) for j in range(n) if j != i] if two_out == "all" \
            else [(i, (i + 1) % n) for i in range(n)]
        splits += [([p for k, p in enumerate(pairs) if k not in (i, j)], pairs[i]) for i, j in drops]
    return splits


def _map_pair(pair: Pair, f: Any) -> Pair:
    return {"input": f(pair["input"]), "output": f(pair["output"])}


def edit_transforms(edit: Edit) -> list[Transform]:
    """Identity first (the untouched puzzles always train), then each chosen family's transforms."""
    return [IDENTITY, *(t for fam in edit.augmentations for t in FAMILIES[fam])]


def build_ttt_examples(record: dict[str, Any], edit: Edit, arc: Any, seed: int) -> tuple[list[Any], dict[str, Any]]:
    """The inner loop's training examples for one edit, and counts of what the caps removed.

    `built` counts the examples the edit asked for after the grid-size caps, `used` those left
    after the random truncation to `arc.max_examples` (the paper's 250); the compute cap judges
    `used` (the paper) or `built` (`arc.cap_on`). Colour-permuted copies are added only when the
    edit chose an augmentation family (the paper), unless `arc.color_permute_unaugmented`.
    """
    rng = random.Random(seed)
    colors = arc.color_permutations if (edit.augmentations or arc.color_permute_unaugmented) else 0
    puzzles: list[tuple[list[Pair], Pair]] = []
    dropped = 0
    for demos, query in leave_out_splits(record["train"], arc.leave_two_out, arc.leave_two_out_pairs):
        for t in edit_transforms(edit):
            tdemos = [_map_pair(p, t.forward) for p in demos]
            tquery = _map_pair(query, t.forward)
            grids = [g for p in [*tdemos, tquery] for g in (p["input"], p["output"])]
            if max(side(g) for g in grids) > arc.max_grid_side or sum(cells(g) for g in grids) > arc.max_example_cells:
                dropped += 1  # e.g. a 20x20 grid up-scaled to 40x40: past ARC's size, too long to train
                continue
            variants = [(tdemos, tquery)]
            for _ in range(colors):
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
    chat = record.get("chat")
    for demos, query in puzzles:
        prompt, answer = puzzle_text(demos, query["input"], chat), grid_to_text(query["output"])
        # "outputs": loss on the answer grid only; "all": on every token, demonstrations included.
        if edit.loss == "outputs":
            examples.append(Example(text=answer, prompt=prompt))
        else:
            examples.append(Example(text=prompt + answer))
    return examples, {"built": built, "dropped_by_size": dropped, "used": len(examples)}


# --- probes and voting
#
# A probe is one query of a test input: (demonstrations, query input, view). Its answer is mapped
# back through the view's inverse before voting. Two schemes (`arc.voting`):
# - paper (the reference's eval): the test input under every leave-one-out subset of the
#   demonstrations, each also in 2 shuffled orders (duplicates dropped), then 5 geometric views,
#   each of one of those puzzles picked at random (seeded); answers are voted hierarchically;
# - flat: the test input after all demonstrations, under each `arc.vote_transforms` view;
#   answers are ranked by plurality.

PAPER_VIEWS = ("transpose", "flip_v", "flip_h", "rot270", "rot180")  # the reference's Transpose,
# Flip(0) (up-down), Flip(1) (left-right), Rotate(90) (numpy's counter-clockwise) and Rotate(180)
PAPER_SHUFFLES = 2  # the reference's permute_n for evaluation queries
Probe = tuple[list[Pair], Grid, str]  # (demonstrations, query input, view name)


def _puzzle_key(demos: list[Pair], query: Grid) -> str:
    return json.dumps([demos, query])


def paper_probes(record: dict[str, Any], test: int) -> list[Probe]:
    """The reference's evaluation queries of test input `test`, in a fixed order (seeded by task
    and test index, so probing and grading rebuild the same list)."""
    rng = random.Random(derive_seed(0, "arc-probe", record["task"], test))
    train, query = record["train"], record["tests"][test]["input"]
    seen: set[str] = set()
    plain: list[list[Pair]] = []
    for i in range(len(train)):
        demos = [p for j, p in enumerate(train) if j != i]
        orders = [demos]
        for _ in range(PAPER_SHUFFLES):
            shuffled = list(demos)
            rng.shuffle(shuffled)
            orders.append(shuffled)
        for d in orders:
            key = _puzzle_key(d, query)
            if key not in seen:
                seen.add(key)
                plain.append(d)
    probes: list[Probe] = [(d, query, "identity") for d in plain]
    for name in PAPER_VIEWS:
        t = TRANSFORMS[name]
        demos = plain[rng.randrange(len(plain))]
        tdemos, tquery = [_map_pair(p, t.forward) for p in demos], t.forward(query)
        key = _puzzle_key(tdemos, tquery)
        if key in seen:  # e.g. a symmetric task: the view asks nothing new (the reference skips it too)
            continue
        seen.add(key)
        probes.append((tdemos, tquery, name))
    return probes


def probes_of(record: dict[str, Any], test: int, arc: Any) -> list[Probe]:
    if arc.voting == "paper":
        return paper_probes(record, test)
    query = record["tests"][test]["input"]
    return [([_map_pair(p, TRANSFORMS[v].forward) for p in record["train"]], TRANSFORMS[v].forward(query), v)
            for v in arc.vote_transforms]


def _map_back(outputs: list[str], views: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """(view, answer text in the test input's own orientation) per parseable answer, and the
    reasons the others cast no vote."""
    back, reasons = [], []
    for name, out in zip(views, outputs, strict=True):
        grid, reason = parse_grid(out)
        if grid is not None:
            orig = TRANSFORMS[name].inverse(grid)
            if orig is not None:
                back.append((name, grid_to_text(orig)))
                continue
            reason = "answer outside the view's image"  # cannot happen for dihedral views
        reasons.append(f"{name}: {reason}")
    return back, reasons


def flat_vote(answers: list[str], attempts: int) -> list[str]:
    """Candidates by votes, ties by the first answer that gave them."""
    counts = Counter(answers)
    first = {a: answers.index(a) for a in counts}
    return sorted(counts, key=lambda a: (-counts[a], first[a]))[:attempts]


def _majority_grid(answers: list[str], transpose: bool) -> str:
    """Row by row (or column by column) the most common line among answers of the most common
    shape: a candidate that may mix answers (the reference's row/column majority)."""
    grids = [parse_grid(a)[0] for a in answers]
    if transpose:
        grids = [[list(c) for c in zip(*g, strict=True)] for g in grids]
    shapes = [(len(g), len(g[0])) for g in grids]
    h, w = max(shapes, key=lambda sh: (shapes.count(sh), -shapes.index(sh)))
    rows = []
    for r in range(h):
        lines = [tuple(g[r]) for g in grids if len(g) > r and len(g[r]) == w]
        rows.append(list(max(lines, key=lambda line: (lines.count(line), -lines.index(line)))))
    if transpose:
        rows = [list(c) for c in zip(*rows, strict=True)]
    return grid_to_text(rows)


def top_three(answers: list[str]) -> list[str]:
    """The three most voted answers; missing places are filled by the row-majority, then the
    column-majority grid (the reference's get_all_type_of_votingsv2, ties broken by first seen)."""
    if not answers:
        return []
    ranked = flat_vote(answers, 3)
    most = ranked[0]
    rows, cols = _majority_grid(answers, False), _majority_grid(answers, True)
    second = ranked[1] if len(ranked) > 1 else (rows if rows != most else cols)
    third = ranked[2] if len(ranked) > 2 else most
    if third in (most, second):
        third = rows if rows not in (most, second) else cols
    return [most, second, third]


def hierarchical_vote(back: list[tuple[str, str]], attempts: int) -> list[str]:
    """The reference's vote: the top three of all answers and of each view's answers are pooled,
    and the pool's top three decide; when the 2nd and 3rd tie in the pool, the one with more votes
    among the identity view's answers is the 2nd attempt."""
    if not back:
        return []
    by_view: dict[str, list[str]] = {}
    for view, ans in back:
        by_view.setdefault(view, []).append(ans)
    pool = top_three([a for _, a in back])
    for view in by_view:
        pool += top_three(by_view[view])
    c1, c2, c3 = top_three(pool)
    if pool.count(c2) == pool.count(c3):
        ident = by_view.get("identity", [])
        if ident.count(c2) > ident.count(c3):
            c3 = c2
        else:
            c2 = c3
    return list(dict.fromkeys([c1, c2, c3]))[:attempts]


def grade_test(solution: Grid, outputs: list[str], views: list[str], arc: Any) -> dict[str, Any]:
    back, reasons = _map_back(outputs, views)
    answers = [a for _, a in back]
    top = hierarchical_vote(back, arc.attempts) if arc.voting == "paper" else flat_vote(answers, arc.attempts)
    sol = grid_to_text(solution)
    return {"solved": sol in top, "pass1": top[:1] == [sol], "answers": top,
            "votes": [answers.count(a) for a in top], "parsed": len(answers), "unparsed": reasons}


# --- The task interface used by the stages (see seal/tasks/__init__.py)


def load_contexts(task_cfg: Any) -> list[dict[str, Any]]:
    arc = task_cfg.arc
    challenges, solutions = load_tasks(task_cfg.data, arc.solutions)
    validate_tasks(challenges, solutions, task_cfg.data)
    unknown = sorted(set(arc.tasks) - set(challenges))
    if unknown:
        raise ConfigError(f"task.arc.tasks: {', '.join(unknown)} not in {task_cfg.data} "
                          f"(it has {', '.join(sorted(challenges)[:12])}{' ...' if len(challenges) > 12 else ''})")
    records = contexts_from(challenges, solutions, arc.context, arc.tasks)
    # A rough check that answers fit the greedy budget (about 2 tokens per cell: digit + space).
    need = max(2 * cells(p["output"]) for r in records for p in r["train"])
    if need > task_cfg.answer_tokens:
        log.warning("task.answer_tokens=%d may be too few for the largest demonstration output "
                    "(about %d tokens)", task_cfg.answer_tokens, need)
    return records


def bind_tokenizer(records: list[dict[str, Any]], tokenizer: Any, task_cfg: Any) -> list[dict[str, Any]]:
    """The records with the model's chat format (`arc.chat: auto` and a tokenizer with a chat
    template): prompts, TTT data and probes are then built in it."""
    chat = ChatFrame.from_tokenizer(tokenizer) if task_cfg.arc.chat == "auto" else None
    return [{**r, "chat": chat} for r in records]


def context_prompt(record: dict[str, Any], task_cfg: Any) -> str:
    return edit_prompt(record, task_cfg.arc)


def edit_problem(text: str, task_cfg: Any) -> str:
    """Why a sampled self-edit cannot be used ('' when it parses): such an edit is sampled again,
    up to `edit_attempts(task_cfg)` samples in all."""
    return parse_edit(text, task_cfg.arc)[1]


def edit_attempts(task_cfg: Any) -> int:
    return task_cfg.arc.edit_attempts


def inner_job(record: dict[str, Any], edit: str, task_cfg: Any, inner_cfg: Any) -> InnerJob:
    """Parse the edit, build its TTT data, apply its lr/epochs to the run's LoRA, or refuse."""
    arc = task_cfg.arc
    parsed, problem, notes = parse_edit(edit, arc)
    if parsed is None:
        return InnerJob(examples=[], lora=inner_cfg, skip=f"unparseable edit: {problem}",
                        info={"edit_notes": notes})
    # Data seeds depend on the task and the edit's choices, so equal edits build equal data, for
    # every test input of a task alike (TTT data come from the demonstrations only).
    seed = derive_seed(0, "arc-ttt", record["task"], parsed)
    examples, stats = build_ttt_examples(record, parsed, arc, seed)
    info = {"edit": {"augmentations": list(parsed.augmentations), "loss": parsed.loss, "lr": parsed.lr,
                     "epochs": parsed.epochs}, "edit_notes": notes, "ttt": stats}
    count = stats[arc.cap_on]
    steps = parsed.epochs * count / inner_cfg.batch_size
    if steps > arc.compute_cap:
        # The paper's rule: an edit this expensive is not trained, and scores 0.
        return InnerJob(examples=[], lora=inner_cfg, info=info,
                        skip=f"over the compute cap: {parsed.epochs} epochs x {count} examples / "
                             f"batch {inner_cfg.batch_size} = {steps:g} steps > {arc.compute_cap:g}")
    if not examples:
        return InnerJob(examples=[], lora=inner_cfg, info=info, skip="no training example fits the size caps")
    lora = inner_cfg.model_copy(update={"lr": parsed.lr, "epochs": parsed.epochs})
    return InnerJob(examples=examples, lora=lora, info=info)


def probe_prompts(record: dict[str, Any], task_cfg: Any) -> list[str]:
    """Every test input's probes, test after test (see `test_probes`)."""
    chat = record.get("chat")
    return [puzzle_text(demos, query, chat)
            for t in range(len(record["tests"])) for demos, query, _ in probes_of(record, t, task_cfg.arc)]


def probe_params(task_cfg: Any, batch_size: int) -> Any:
    return GenParams(max_new_tokens=task_cfg.answer_tokens, temperature=0.0, batch_size=batch_size)


def grade_outputs(record: dict[str, Any], outputs: list[str], task_cfg: Any) -> dict[str, Any]:
    """Score 1 when every test input's solution is among its top `attempts` voted answers.
    "answers", "votes" and "parsed" hold one entry per test input."""
    arc = task_cfg.arc
    if not outputs:
        return {"score": 0.0, "pass1": 0.0, "answers": [], "votes": [], "parsed": [], "unparsed": []}
    tests, start = [], 0
    for t, test in enumerate(record["tests"]):
        views = [v for _, _, v in probes_of(record, t, arc)]
        tests.append(grade_test(test["solution"], outputs[start:start + len(views)], views, arc))
        start += len(views)
    return {
        "score": 1.0 if all(g["solved"] for g in tests) else 0.0,
        "pass1": 1.0 if all(g["pass1"] for g in tests) else 0.0,
        "answers": [g["answers"] for g in tests], "votes": [g["votes"] for g in tests],
        "parsed": [g["parsed"] for g in tests], "unparsed": [r for g in tests for r in g["unparsed"]],
    }
