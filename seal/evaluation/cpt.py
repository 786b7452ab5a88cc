"""`seal eval-knowledge --setting cpt`: the paper's continued-pretraining (CPT) table.

One model update per row on all n passages at once, then every passage's questions asked without
its passage. Rows as the paper's CPT table: base model (no update); passages only; passages + each
paper-edits file's self-edits (the paper's base-model and GPT-4.1 files); passages + self-edits
sampled now from a policy (`base`, or `RUN@R`: a trained SEAL policy). Every row's training set is
the union over passages of what the single-passage inner loop trains on for one self-edit
(seal.tasks.knowledge.inner_job: the edit's items and, with task.train_on_passage, the passage),
for each of a passage's first K self-edits; a text that repeats (the passage, K times) is kept once.

The update is one LoRA adapter (the default, `--update lora`: the paper's first version, cheap on
small machines) or full fine-tuning (`--update full`, its later version), trained with the config's
`inner` settings (lr, epochs, batch size, schedule: set them with --set inner.*; full fine-tuning
wants a far smaller lr than LoRA) by seal.inner.train, the same loop as the sequential inner loop.
Every row starts from the base model with the same seed, so rows differ only by what they train on.

Resumable: the plan is eval.json (as the single-passage setting's, with setting 'cpt'); a row's
update is done when update/<row>.json exists (written after the adapter or model); a policy row's
sampled edits are kept at edits/<row>.json before training, so a rerun trains on the same edits;
each scoring shard (a row's passages, --shard-size at a time) writes one results object, in the
single-passage form, so seal.evaluation.knowledge.join makes the table with bootstrap intervals
over passages. On a cluster, workflows/eval-cpt.yaml trains every row in one GPU pod (`--train`)
and fans the scoring shards out.
"""

from __future__ import annotations

import logging
import tempfile
import time
from typing import Any

from seal.config import RunConfig
from seal.errors import ConfigError
from seal.evaluation.knowledge import Evaluator, read_spec, result_line, row_edits, wanted_shards, write_table
from seal.inner import train
from seal.inner.score import score_records
from seal.models.loading import choose_placement, load_model
from seal.seeds import derive_seed
from seal.stages.runs import cpt_update_key, cpt_update_meta_key, eval_shard_key
from seal.store import Store, open_store
from seal.tasks import knowledge

log = logging.getLogger(__name__)

UPDATES = ("lora", "full")


def training_set(cfg: RunConfig, records: list[dict[str, Any]], edits: list[list[str]]) -> list[train.Example]:
    """Every passage's inner-loop examples for each of its self-edits, in passage order, each text
    once. 'passage only' rows have the one edit "" (the passage alone)."""
    seen: set[str] = set()
    out = []
    for rec, texts in zip(records, edits, strict=True):
        for text in texts:
            if text == "":
                examples = [train.Example(text=t) for t in knowledge.training_texts(rec, "", True)]
            else:
                examples = knowledge.inner_job(rec, text, cfg.task, cfg.inner).examples
            for ex in examples:
                if ex.text not in seen:
                    seen.add(ex.text)
                    out.append(ex)
    return out


def train_row(out: Store, ev: Evaluator, spec: dict[str, Any], records: list[dict[str, Any]], row_i: int) -> bool:
    """A row's one update, into update/<row>/ then update/<row>.json; False if it was done."""
    if spec["rows"][row_i]["kind"] == "base" or out.exists(cpt_update_meta_key(row_i)):
        return False
    cfg, tok = ev.cfg, ev.base.tokenizer
    ids = list(range(len(records)))
    edits = row_edits(out, ev, spec, records, row_i, ids)
    examples = training_set(cfg, records, edits)
    seed = derive_seed(cfg.seed, "eval-cpt-update")  # the same in every row: only the data differs
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="seal-cpt-") as tmp:
        if spec["update"] == "full":
            model = ev.base.load_base()  # a copy of its own: the shared base stays as it is
            for p in model.parameters():
                p.requires_grad_(True)
            stats = train.train(model, tok, examples, cfg.inner, seed, cfg.model.max_length)
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            del model
        else:
            peft_model, stats = train.lora_update(ev.base.policy_model(0), tok, examples, cfg.inner, seed,
                                                  cfg.model.max_length)
            peft_model.save_pretrained(tmp)
            peft_model.unload()  # strips the LoRA layers: the shared base is as before
        out.put_dir(cpt_update_key(row_i), tmp)
    meta = {"row": spec["rows"][row_i]["name"], "update": spec["update"], "examples": len(examples),
            "train_s": round(time.perf_counter() - t0, 2), **stats}
    out.write_json(cpt_update_meta_key(row_i), meta)  # last: the update is done
    log.info("eval-knowledge cpt: %s trained on %d examples in %.1f s", meta["row"], len(examples), meta["train_s"])
    return True


class Updated:
    """The model one row's update made, kept while consecutive shards score the same row."""

    def __init__(self, ev: Evaluator, out: Store, update: str):
        self.ev, self.out, self.update = ev, out, update
        self.row: int | None = None
        self.model: Any = None

    def get(self, row_i: int, kind: str) -> Any:
        if self.row == row_i:
            return self.model
        self.drop()
        base = self.ev.base.policy_model(0)
        if kind == "base":
            self.model = base
        else:
            if not self.out.exists(cpt_update_meta_key(row_i)):
                raise ConfigError(f"{self.out.uri}: row {row_i}'s update is not trained yet: run `seal "
                                  f"eval-knowledge --out {self.out.uri} --train` first")
            with tempfile.TemporaryDirectory(prefix="seal-cpt-") as tmp:
                self.out.get_dir(cpt_update_key(row_i), tmp)
                if self.update == "full":
                    self.model = load_model(tmp, choose_placement(self.ev.cfg.model.device, self.ev.cfg.model.dtype))
                else:
                    from peft import PeftModel

                    self.model = PeftModel.from_pretrained(base, tmp)
                    self.model.eval()
        self.row = row_i
        return self.model

    def drop(self) -> None:
        if self.model is not None and self.update == "lora" and hasattr(self.model, "unload"):
            self.model.unload()  # the shared base without the adapter's layers
        self.model, self.row = None, None


def run_shard(out: Store, ev: Evaluator, updated: Updated, spec: dict[str, Any], records: list[dict[str, Any]],
              shard: int) -> bool:
    """One scoring shard's results, written whole; False if they were already there."""
    key = eval_shard_key(shard)
    if out.exists(key):
        return False
    row_i, ids = spec["shards"][shard]["row"], spec["shards"][shard]["passages"]
    row = spec["rows"][row_i]
    t0 = time.perf_counter()
    model = updated.get(row_i, row["kind"])
    recs = [records[p] for p in ids]
    graded = score_records(model, ev.base.tokenizer, knowledge, recs, ev.cfg)
    stats = {} if row["kind"] == "base" else out.read_json(cpt_update_meta_key(row_i))
    fit = None if row["kind"] == "base" else 0
    lines = [result_line(row["name"], p, 0, fit, None, rec, g, stats)
             for p, rec, g in zip(ids, recs, graded, strict=True)]
    for line in lines:
        line["shard_s"] = round(time.perf_counter() - t0, 2)
    out.write_jsonl(key, lines)
    return True


def evaluate(out_uri: str, shards: list[int] | None = None, train_only: bool = False) -> dict[str, Any] | None:
    """Train every row's update not trained yet (unless only some shards are asked for: a scoring
    pod's share needs the updates trained), score the shards not done, then the join (only when
    no shards were named). Returns the table, or None."""
    out = open_store(out_uri)
    spec, cfg, records = read_spec(out)
    if spec.get("setting") != "cpt":
        raise ConfigError(f"{out.uri}/eval.json is not a CPT evaluation (setting {spec.get('setting', 'single')!r})")
    wanted = wanted_shards(spec, shards)
    ev = Evaluator(cfg)
    if shards is None or train_only:
        for i in range(len(spec["rows"])):
            train_row(out, ev, spec, records, i)
    if train_only:
        ev.release()
        return None
    updated = Updated(ev, out, spec["update"])
    for s in wanted:
        t0 = time.perf_counter()
        if run_shard(out, ev, updated, spec, records, s):
            log.info("eval-knowledge cpt shard %d/%d done in %.1f s", s + 1, len(spec["shards"]),
                     time.perf_counter() - t0)
    updated.drop()
    ev.release()
    if shards is not None:
        return None
    return write_table(out)
