"""Warm start: a tiny base model trained from scratch on the world's warm-start split, on CPU.

The base model must (a) read and write the world's language and answer questions in the probe
format, and (b) as a policy, write self-edits for a passage in a *mix* of styles (seal.tasks.world's
qa / paraphrase / drift, in equal shares). It is trained, full fine-tune from a random init, on
an endless stream of examples (shares in `example_stream`), about warm-start entities or about
throwaway entities (names in no split, facts drawn afresh each time, seal.tasks.world.scratch_record):

- 50%: self-edit prompt -> self-edit of a uniformly drawn style (loss on the edit only), about a
  throwaway entity, so the policy must copy facts from the passage it reads, not recall them;
- 20%: reading practice: a throwaway entity's passage, one of its questions, the answer;
- 10%: a warm-start passage in the inner loop's format (`<title>\\n<passage>`), then repeated;
- 10%: a warm-start question in the probe format (`Topic: <title>\\n<question>\\n<answer>`);
- 10%: a warm-start self-edit item in the inner loop's format, any style.

No example says which style is useful. Whatever ReSTEM later prefers, it learns from the reward
of real LoRA fits on the train split, graded against that split's answers.

`model.base: "world:seed=0"` builds this model once into the seal cache (`resolve_world_model`).
"""

from __future__ import annotations

import logging
import math
import random
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from seal.errors import ConfigError
from seal.inner.train import IGNORE, Example, encode
from seal.models.cache import cache_dir, publish
from seal.models.tiny import build_tiny_model
from seal.seeds import seed_everything
from seal.tasks import world
from seal.tasks.knowledge import SEAL_PROMPTS, question_prompt, training_texts

log = logging.getLogger(__name__)

# Measured on the world demo (README, "The gain depends on the warm start"): ReSTEM learned from
# every warm start whose final loss ended below about this, and from none that ended well above it.
LEARNS_BELOW = 0.42


@dataclass(frozen=True)
class WarmStartSpec:
    """Model size and training budget; 'world:seed=0' takes every default."""

    seed: int = 0  # the world's seed (and the model's)
    hidden: int = 128
    layers: int = 2  # two layers suffice to copy; at this budget they learn it sooner than four
    vocab: int = 1024
    steps: int = 1500  # optimiser steps of the warm start
    batch: int = 12  # packed rows of `row` tokens per step
    row: int = 192
    lr_milli: int = 5  # peak learning rate, in thousandths (5 -> 5e-3)
    prompt: str = "implications"  # the self-edit prompt variant the policy is trained on


def parse_model_spec(spec: str) -> WarmStartSpec:
    """'world:seed=0,hidden=128,steps=800' -> WarmStartSpec."""
    body = spec[len(world.WORLD_PREFIX):]
    out: dict[str, Any] = {}
    fields = WarmStartSpec.__dataclass_fields__
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        if key == "prompt" and value in SEAL_PROMPTS:
            out[key] = value
        elif key in fields and key != "prompt" and value.isdigit():
            out[key] = int(value)
        else:
            raise ConfigError(f"model.base '{spec}': '{item}' is not one of "
                              f"{', '.join(k + '=N' for k in fields if k != 'prompt')}, prompt=VARIANT")
    return WarmStartSpec(**out)


def world_spec(ws: WarmStartSpec) -> world.WorldSpec:
    return world.WorldSpec(seed=ws.seed)


# --- Data


def example_stream(records: list[dict[str, Any]], prompt: str, rng: random.Random, spec: world.WorldSpec):
    """Endless training examples about `records` (the warm-start split): see the module doc.

    The policy's examples are about throwaway entities (seal.tasks.world.scratch_record: names in no
    split, facts drawn afresh), so the policy learns to copy facts from the passage it reads.
    """

    while True:
        rec = rng.choice(records)
        kind = rng.random()
        name = rec["title"]
        if kind < 0.5:  # the policy: prompt -> an edit of a uniformly drawn style
            fresh = world.scratch_record(spec, rng)
            style = rng.choice(world.STYLES)
            prompt_text = SEAL_PROMPTS[prompt].format(title=fresh["title"], context=fresh["context"])
            yield Example(text=world.write_edit(fresh, style, rng), prompt=prompt_text)
        elif kind < 0.7:  # reading: a question answered from a passage in view (throwaway entity)
            fresh = world.scratch_record(spec, rng)
            q = rng.choice(fresh["questions"])
            # " answer": the same token as in the passage, so this is copying (see world.write_edit).
            yield Example(text=" " + q["answer"], prompt=f"{fresh['title']}\n{fresh['context']}\n{q['question']}\n")
        elif kind < 0.8:  # the passage, as the inner loop trains on it, then again verbatim:
            # repeating text is what grows the copying ("induction") heads a policy needs
            passage = _redraw_passage(rec, rng)
            yield Example(text=f"{name}\n{passage}\n{passage}")
        elif kind < 0.9:  # a question in the probe format, with its answer
            q = rng.choice(rec["questions"])
            yield Example(text=q["answer"], prompt=question_prompt(name, q["question"], "topic"))
        else:  # self-edit lines as the inner loop sees them (a question with its answer: one item)
            style = rng.choice(world.STYLES)
            items = training_texts(rec, world.write_edit(rec, style, rng), with_passage=False, qa_pairs=True)
            yield Example(text=rng.choice(items))


def _redraw_passage(rec: dict[str, Any], rng: random.Random) -> str:
    attrs = list(rec["facts"])
    return " ".join(rng.choice(world.FACT_TEMPLATES[a]).format(name=rec["title"], v=rec["facts"][a])
                    for a in attrs)


def tokenizer_corpus(records: list[dict[str, Any]]) -> list[str]:
    """Warm-start text only (never the train or held-out splits), plus seal's prompt templates."""
    rng = random.Random(0)
    # The prompts are repeated so their words become whole tokens: shorter sequences, faster steps.
    texts = list(SEAL_PROMPTS.values()) * 50 + ["Topic: "] * 50
    for rec in records:
        texts.append(rec["context"])
        texts += [q["question"] + "\n" + q["answer"] for q in rec["questions"]]
        texts += [world.write_edit(rec, s, rng) for s in world.STYLES]
    return texts


# --- Training


def build(out: str | Path, ws: WarmStartSpec, progress: bool = True) -> dict[str, Any]:
    """Train the warm-start model from scratch and write it (with its tokenizer) to `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer


    records = world.generate(world_spec(ws))["warmstart"]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    t0 = time.perf_counter()
    build_tiny_model(tmp / "init", ws.hidden, ws.layers, ws.seed, ws.vocab, tokenizer_corpus(records))
    tok = AutoTokenizer.from_pretrained(tmp / "init")
    # Eager attention: at this size it is faster on CPU than SDPA's kernels.
    model = AutoModelForCausalLM.from_pretrained(tmp / "init", dtype=torch.float32, attn_implementation="eager")
    seed_everything(ws.seed)
    stream = example_stream(records, ws.prompt, random.Random(ws.seed), world_spec(ws))
    opt = torch.optim.AdamW(model.parameters(), lr=ws.lr_milli / 1000, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, ws.steps // 20)

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to a tenth
        if step < warmup:
            return (step + 1) / warmup
        frac = (step - warmup) / max(1, ws.steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    bar = _bar(ws.steps, progress)
    model.train()
    losses: list[float] = []
    for _step in range(ws.steps):
        batch = packed_batch(tok, stream, ws.batch, ws.row)
        for _redraw in range(100):  # all prompt (rows cut short): a 0/0 loss would make every weight NaN
            if (batch["labels"] != IGNORE).any():
                break
            batch = packed_batch(tok, stream, ws.batch, ws.row)
        else:
            raise ConfigError(f"model.base world:...,row={ws.row}: rows this short hold no trained token; "
                              "use a larger row= (the default is 192)")
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}", refresh=False)
    if bar is not None:
        bar.close()
    model.eval()
    final = tmp / "model"
    model.save_pretrained(final)
    tok.save_pretrained(final)
    stats = {"spec": asdict(ws), "seconds": round(time.perf_counter() - t0, 1),
             "final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4)}
    import json

    (final / "warmstart.json").write_text(json.dumps(stats, indent=2, sort_keys=True))
    publish(final, out, replace=False)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    log.info("warm start: %s steps in %.0f s, final loss %.3f", ws.steps, stats["seconds"], stats["final_loss"])
    if not stats["final_loss"] <= LEARNS_BELOW:
        log.warning("warm start: final loss %.3f is above %.2f, where the world demo's loop stops learning "
                    "reliably; train longer (model.base world:...,steps=N with a larger N)",
                    stats["final_loss"], LEARNS_BELOW)
    return stats


def packed_batch(tok: Any, stream: Any, rows: int, length: int) -> dict[str, Any]:
    """Examples packed back to back (each ending in EOS) into full rows: no padding to compute.

    Attention crosses example boundaries, as in ordinary LM pretraining; prompts stay masked.
    """
    import torch

    ids, labels = [], []
    for _ in range(rows):
        row_ids: list[int] = []
        row_labels: list[int] = []
        while len(row_ids) < length:
            x, y = encode(tok, next(stream), length)
            row_ids += x
            row_labels += y
        ids.append(row_ids[:length])
        labels.append(row_labels[:length])
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}


def _bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="warm start (base model from scratch)", unit="step", mininterval=2.0)


def resolve_world_model(spec: str) -> str:
    """The folder of the warm-start model named by a 'world:...' model.base, built once."""
    ws = parse_model_spec(spec)
    key = "-".join(f"{k}{v}" for k, v in sorted(asdict(ws).items()))
    path = cache_dir() / "world" / key
    if not (path / "config.json").exists():
        log.info("building the warm-start model %s into %s (once; later runs reuse it)", spec, path)
        build(path, ws)
    return str(path)
