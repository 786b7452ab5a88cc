"""The four stages of a ReSTEM round, each reading and writing only the run's store.

`seal run` calls these in order in one process; the Argo workflow calls the same functions one
shard per pod through `seal plan|sample|adapt|improve`, so the two cannot drift. A stage is done
exactly when its output object exists; each output is written whole, so a rerun after a crash
skips finished shards and redoes only what is missing.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from datetime import UTC, datetime
from typing import Any

from seal import __version__, metrics
from seal.adapt import Candidate, fit_candidate, score_model
from seal.config import RunConfig, from_dict
from seal.errors import ConfigError
from seal.generate import GenParams, make_generator
from seal.plan import make_plan
from seal.restem import filter_scores, m_step, sft_rows
from seal.seeds import derive_seed
from seal.store import Store
from seal.tasks import get_task

log = logging.getLogger(__name__)


def rkey(round_: int, name: str) -> str:
    return f"round-{round_}/{name}"


def shard_key(round_: int, kind: str, shard: int) -> str:
    return rkey(round_, f"{kind}/{shard:05d}.jsonl")


class Runtime:
    """What one process loads once and reuses across stages and shards: data and models."""

    def __init__(self, cfg: RunConfig, run: Store):
        self.cfg, self.run = cfg, run
        self.task = get_task(cfg.task.name)
        self._records: list[dict[str, Any]] | None = None
        self._tokenizer: Any = None
        self._model: Any = None
        self._model_round: int | None = None

    @property
    def records(self) -> list[dict[str, Any]]:
        if self._records is None:
            self._records = self.task.load_contexts(self.cfg.task)
        return self._records

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from seal.models import load_tokenizer

            self._tokenizer = load_tokenizer(self.cfg.model.base)
        return self._tokenizer

    def load_base(self) -> Any:
        from seal.models import choose_placement, load_model

        placement = choose_placement(self.cfg.model.device, self.cfg.model.dtype)
        return load_model(self.cfg.model.base, placement)

    def policy_model(self, round_: int) -> Any:
        """The model acting in round r: the base with round r-1's policy adapter merged in."""
        if self._model_round != round_:
            self._model = None  # free the previous round's weights before loading new ones
            t0 = time.perf_counter()
            model = self.load_base()
            if round_ > 0 and policy_has_adapter(self.run, round_ - 1):
                from peft import PeftModel

                with tempfile.TemporaryDirectory(prefix="seal-policy-") as tmp:
                    self.run.get_dir(rkey(round_ - 1, "policy"), tmp)
                    model = PeftModel.from_pretrained(model, tmp).merge_and_unload()
                model.eval()
            # A pod's fixed cost: compare it with the stage's time to size shards (shards.*_size).
            log.info("round %d model loaded in %.1f s", round_, time.perf_counter() - t0)
            self._model, self._model_round = model, round_
        return self._model

    def release(self) -> None:
        self._model, self._model_round = None, None


def policy_generator(rt: Runtime, round_: int) -> Any:
    """The self-edit sampler of round r: vLLM serves the base plus the policy adapter of round r-1
    as a LoRARequest; transformers runs the base with that adapter merged in."""
    from seal.vllm_backend import resolve_backend

    if resolve_backend(rt.cfg.sampling.backend) != "vllm":
        return make_generator("transformers", rt.policy_model(round_), rt.tokenizer)
    from seal.models import resolve_model
    from seal.vllm_backend import VllmGenerator, get_engine, local_dir

    adapter = None
    if round_ > 0 and policy_has_adapter(rt.run, round_ - 1):
        adapter = local_dir("seal-policy-")
        rt.run.get_dir(rkey(round_ - 1, "policy"), adapter)
    return VllmGenerator(get_engine(resolve_model(rt.cfg.model.base), rt.cfg), adapter)


def policy_has_adapter(run: Store, round_: int) -> bool:
    return bool(run.read_json(rkey(round_, "policy/policy.json"))["adapter"])


# --- init


def init_run(run: Store, cfg: RunConfig) -> dict[str, Any]:
    """Write run.json once; an existing run must have the same config (rounds and store aside)."""
    if run.exists("run.json"):
        meta = run.read_json("run.json")
        old = from_dict(meta["config"])
        if old.fingerprint() != cfg.fingerprint():
            raise ConfigError(
                f"run {run.uri} exists with a different config: keep its config or pick a new run_id"
            )
        if meta["config"]["rounds"] == cfg.rounds:
            return meta
        meta["config"]["rounds"] = cfg.rounds  # extending or shortening a run is allowed
    else:
        meta = {
            "config": cfg.model_dump(mode="json"),
            "fingerprint": cfg.fingerprint(),
            "version": __version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "status": "running",
        }
    run.write_json("run.json", meta)
    return meta


def set_status(run: Store, status: str, message: str = "") -> None:
    meta = run.read_json("run.json")
    meta["status"], meta["message"] = status, message
    meta["updated"] = datetime.now(UTC).isoformat(timespec="seconds")
    run.write_json("run.json", meta)


# --- plan


@metrics.stage("plan")
def plan_round(rt: Runtime, round_: int) -> dict[str, Any]:
    key = rkey(round_, "plan.json")
    if rt.run.exists(key):
        return rt.run.read_json(key)
    plan = make_plan(rt.cfg, len(rt.records), round_)
    rt.run.write_json(key, plan)
    return plan


def read_plan(run: Store, round_: int) -> dict[str, Any]:
    key = rkey(round_, "plan.json")
    if not run.exists(key):
        raise ConfigError(f"{run.uri}/{key} does not exist: run `seal plan` for round {round_} first")
    return run.read_json(key)


# --- sample


@metrics.stage("sample", sharded=True)
def sample_shard(rt: Runtime, round_: int, shard: int) -> bool:
    """Sample K self-edits for each context of one shard; returns False if it was already done."""
    key = shard_key(round_, "edits", shard)
    if rt.run.exists(key):
        return False
    cfg = rt.cfg
    plan = read_plan(rt.run, round_)
    _check_shard(plan["sample_shards"], shard, "sample")
    jobs = [(c, k) for c in plan["sample_shards"][shard] for k in range(cfg.edits_per_context)]
    prompts = [rt.task.context_prompt(rt.records[c], cfg.task) for c, _ in jobs]
    seeds = [derive_seed(cfg.seed, "sample", round_, c, k) for c, k in jobs]
    gen = policy_generator(rt, round_)
    params = GenParams(
        max_new_tokens=cfg.sampling.max_new_tokens,
        temperature=cfg.sampling.temperature,
        top_p=cfg.sampling.top_p,
        batch_size=cfg.sampling.batch_size,
    )
    t0 = time.perf_counter()
    completions = gen.generate(prompts, seeds, params)
    share = (time.perf_counter() - t0) / max(1, len(jobs))  # this edit's share of the shard's time
    rows = [
        {"context": c, "k": k, "prompt": p, "text": comp.text, "tokens": comp.tokens,
         "finish": comp.finish, "seed": s, "backend": gen.name, "gen_s": round(share, 4)}
        for (c, k), p, s, comp in zip(jobs, prompts, seeds, completions, strict=True)
    ]
    rt.run.write_jsonl(key, rows)
    metrics.self_edits_sampled(cfg.task.name, len(rows), sum(r["tokens"] for r in rows))
    return True


def _check_shard(shards: list[Any], shard: int, stage: str) -> None:
    if not 0 <= shard < len(shards):
        raise ConfigError(f"--shard {shard} is out of range: this round's plan has {len(shards)} {stage} shards")


def read_edits(run: Store, plan: dict[str, Any], round_: int, contexts: set[int]) -> dict[tuple[int, int], dict]:
    """The edit rows of the given contexts, read from the sample shards that hold them."""
    edits: dict[tuple[int, int], dict] = {}
    for s, shard_contexts in enumerate(plan["sample_shards"]):
        if not contexts.intersection(shard_contexts):
            continue
        key = shard_key(round_, "edits", s)
        if not run.exists(key):
            raise ConfigError(f"{run.uri}/{key} is missing: finish round {round_}'s sampling first")
        for row in run.read_jsonl(key):
            edits[(row["context"], row["k"])] = row
    return edits


# --- adapt


@metrics.stage("adapt", sharded=True)
def adapt_shard(rt: Runtime, round_: int, shard: int, progress: Any = None) -> bool:
    """The inner loop for one shard of candidates; returns False if it was already done."""
    key = shard_key(round_, "scores", shard)
    if rt.run.exists(key):
        return False
    cfg = rt.cfg
    plan = read_plan(rt.run, round_)
    _check_shard(plan["adapt_shards"], shard, "adapt")
    pairs = [tuple(p) for p in plan["adapt_shards"][shard]]
    edits = read_edits(rt.run, plan, round_, {c for c, _ in pairs})
    model = rt.policy_model(round_)
    adapters = rt.run.child(rkey(round_, "adapters")) if cfg.inner.keep_adapters != "none" else None
    baselines: dict[int, float] = {}
    rows = []
    if cfg.inner.batched:  # all fits B at a time (seal.multilora), then one scoring call
        from seal.multilora import fit_shard

        cands = [Candidate(context=c, k=k, text=edits[(c, k)]["text"]) for c, k in pairs]
        merged = round_ > 0 and policy_has_adapter(rt.run, round_ - 1)
        fitted = iter(fit_shard(model, rt.tokenizer, rt.task, rt.records, cands, cfg, round_, adapters, merged,
                                baselines=True))
    for c, k in pairs:
        record = rt.records[c]
        if cfg.inner.batched:
            row = next(fitted)  # with its "baseline" when the shard's one scoring call answered it
        else:
            cand = Candidate(context=c, k=k, text=edits[(c, k)]["text"])
            model, row = fit_candidate(model, rt.tokenizer, rt.task, record, cand, cfg, round_, adapters)
        if c not in baselines:
            baselines[c] = (row["baseline"] if "baseline" in row
                            else score_model(model, rt.tokenizer, rt.task, record, cfg)["score"])
        row["baseline"] = baselines[c]
        rows.append(row)
        metrics.inner_fits(cfg.task.name, row["fit_s"], row["reward"])
        if progress is not None:
            progress.update(1)
    rt.run.write_jsonl(key, rows)
    return True


# --- improve


@metrics.stage("improve")
def improve_round(rt: Runtime, round_: int) -> dict[str, Any]:
    """Join scores, filter, run the M-step, write kept.jsonl, policy/ and summary.json (last)."""
    run, cfg = rt.run, rt.cfg
    summary_key = rkey(round_, "summary.json")
    if run.exists(summary_key):
        return run.read_json(summary_key)
    t0 = time.perf_counter()
    plan = read_plan(run, round_)
    scores = []
    for a in range(len(plan["adapt_shards"])):
        key = shard_key(round_, "scores", a)
        if not run.exists(key):
            raise ConfigError(f"{run.uri}/{key} is missing: finish round {round_}'s adaptation first")
        scores.extend(run.read_jsonl(key))
    edits = read_edits(run, plan, round_, set(plan["contexts"]))
    kept_key = rkey(round_, "kept.jsonl")
    if run.exists(kept_key):
        kept = run.read_jsonl(kept_key)
    else:
        kept = sft_rows(filter_scores(scores, cfg.filter), edits)
        run.write_jsonl(kept_key, kept)
        metrics.edits_kept(cfg.task.name, len(kept))
    mstep = write_policy(rt, round_, kept)
    prune_adapters(run, cfg, round_, scores, kept)
    rewards = [r["reward"] for r in scores]
    baselines = {r["context"]: r["baseline"] for r in scores}
    summary = {
        "round": round_,
        "contexts": len(plan["contexts"]),
        "candidates": len(scores),
        "mean_reward": sum(rewards) / len(rewards),
        "max_reward": max(rewards),
        "mean_baseline": sum(baselines.values()) / len(baselines),
        "kept": len(kept),
        # Edits the task refused to train (unparseable, over a compute cap): reward 0, counted.
        "skipped": sum(1 for r in scores if r.get("skip")),
        "mstep": mstep,
        "tokens": sum(e["tokens"] for e in edits.values()),
        "seconds": {
            "sample": round(sum(e["gen_s"] for e in edits.values()), 2),
            "adapt": round(sum(sum(r["fit_s"]) + sum(r["score_s"]) for r in scores), 2),
            "improve": round(time.perf_counter() - t0, 2),
        },
    }
    run.write_json(summary_key, summary)
    return summary


def write_policy(rt: Runtime, round_: int, kept: list[dict[str, Any]]) -> dict[str, Any]:
    """The M-step: policy/ holds policy.json and, when trained, the LoRA adapter."""
    run, cfg = rt.run, rt.cfg
    key = rkey(round_, "policy")
    if run.exists(key):
        return run.read_json(f"{key}/policy.json")
    previous = round_ > 0 and policy_has_adapter(run, round_ - 1)
    with tempfile.TemporaryDirectory(prefix="seal-mstep-") as tmp, \
            tempfile.TemporaryDirectory(prefix="seal-prev-") as prev_dir:
        if previous and cfg.mstep.init == "previous":
            run.get_dir(rkey(round_ - 1, "policy"), prev_dir)
        if kept:
            rt.release()  # the M-step trains a fresh copy of the base: drop the merged policy
            stats = m_step(rt.load_base(), rt.tokenizer, kept, cfg, derive_seed(cfg.seed, "mstep", round_),
                           tmp, prev_dir if previous else None)
            meta = {"adapter": True, "examples": len(kept), "init": cfg.mstep.init, **stats}
        elif previous and cfg.mstep.init == "previous":
            # Nothing kept: the previous policy carries over unchanged.
            meta = {"adapter": True, "examples": 0, "init": "previous", "carried_from": round_ - 1}
            tmp = prev_dir
        else:
            meta = {"adapter": False, "examples": 0, "init": cfg.mstep.init}
        with open(f"{tmp}/policy.json", "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
        run.put_dir(key, tmp)
    return meta


def prune_adapters(run: Store, cfg: RunConfig, round_: int, scores: list[dict], kept: list[dict]) -> None:
    """keep_adapters=winners: drop the fitted adapters of edits that were not kept."""
    if cfg.inner.keep_adapters != "winners":
        return
    winners = {(r["context"], r["k"]) for r in kept}
    for r in scores:
        if (r["context"], r["k"]) not in winners:
            run.delete(rkey(round_, f"adapters/{r['context']}/{r['k']}"))
