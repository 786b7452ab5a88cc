"""The `seal` command: one subcommand per stage, and the CLI owns all of their dispatch (the
COMMANDS table). A handler parses what argparse leaves as text, calls the library with typed
arguments, and prints what it returns.

Every failure the user can fix ends in one line on stderr and an exit code from
docs/architecture.md (2 usage/config, 65 bad data, 75 transient), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from seal import metrics
from seal.cluster import submit
from seal.cluster.status import run_status
from seal.cluster.workflow import fanout_groups
from seal.config import check_flag_bound, describe_fields, load_config
from seal.errors import EXIT_TRANSIENT, EXIT_USAGE, ConfigError, DataError, SealError, TransientError
from seal.evaluation import arc as arc_eval
from seal.evaluation import continual, cpt
from seal.evaluation import knowledge as knowledge_eval
from seal.evaluation import world as world_eval
from seal.models.tiny import build_tiny_model
from seal.report import plot_rewards, round_table
from seal.stages.adapt import adapt_shard
from seal.stages.improve import improve_round
from seal.stages.local import run_local
from seal.stages.plan import plan_round, shard_indices
from seal.stages.runs import init_run, load_run, run_config, summaries
from seal.stages.runtime import Runtime
from seal.stages.sample import sample_shard
from seal.stages.verify import verify_run
from seal.store import TRANSIENT_ERRNOS, open_store


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set rounds=1 --set inner.lr=3e-4")


def _stage_args(p: argparse.ArgumentParser, shard: bool = False) -> None:
    p.add_argument("--run", required=True, help="run URI: <store>/<run_id>, e.g. s3://bucket/runs/r1")
    p.add_argument("--round", type=int, required=True, help="round number, from 0")
    if shard:
        p.add_argument("--shard", type=shard_range, required=True,
                       help="shard number from 0, or a range A-B of shards run one after another (one Argo pod)")
    _redo_arg(p)


def _redo_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--redo", action="store_true",
                   help="rewrite the output even if it exists (what `seal verify` prints for a damaged "
                   "object of a finished round; an unfinished round redoes damaged outputs by itself)")


def shard_range(text: str) -> list[int]:
    """'3' -> [3]; '4-7' -> [4, 5, 6, 7] (what `seal plan --out-dir` hands to Argo's withParam)."""
    first, sep, last = text.partition("-")
    try:
        lo, hi = int(first), int(last) if sep else int(first)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shard number or range A-B") from None
    if lo < 0 or hi < lo:
        raise argparse.ArgumentTypeError(f"{text!r}: shards run from 0, and a range A-B needs A <= B")
    return list(range(lo, hi + 1))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seal", description="SEAL self-edits with ReSTEM.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run (or resume) the whole loop on this machine")
    p.add_argument("config", nargs="?", help="YAML run config (default: the built-in CPU demo)")
    _config_args(p)
    p.add_argument("--plot", help="also write the reward plot to this PNG path")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics on this port while running (default: $SEAL_METRICS_PORT)")
    p.add_argument("--pushgateway", default=None,
                   help="push each stage's metrics to this Pushgateway URL (default: $SEAL_PUSHGATEWAY)")

    p = sub.add_parser("report", help="print a run's round table and plot reward per round")
    p.add_argument("run", help="run URI: <store>/<run_id>")
    p.add_argument("--plot", default=None, help="PNG path (default: ./<run_id>-rewards.png)")

    p = sub.add_parser("tiny-model", help="write a random tiny Qwen2-style model and tokenizer")
    p.add_argument("out", help="output folder")
    p.add_argument("--hidden", type=int, default=256, help="hidden size (multiple of 32)")
    p.add_argument("--layers", type=int, default=4, help="transformer layers")
    p.add_argument("--seed", type=int, default=0, help="weight init seed")
    p.add_argument("--vocab", type=int, default=2048, help="tokenizer vocabulary size (at most)")
    p.add_argument("--corpus", help="text file to train the tokenizer on (default: bundled passages)")

    p = sub.add_parser("world-report", help="held-out table of a run in seal.tasks.world: base, passage, each policy")
    p.add_argument("run", help="run URI: <store>/<run_id> of a finished `seal run` on a world config")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated evaluation seeds (default 0,1,2)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N held-out passages")
    p.add_argument("--plot", default=None, help="PNG path (default: ./<run_id>-world.png)")

    p = sub.add_parser("config-help", help="list every config key with its default and meaning")

    p = sub.add_parser("eval-arc", help="few-shot ARC success: SEAL policy, un-trained policy, in-context, oracle")
    p.add_argument("config", help="YAML run config with task.name: arc (its task files are the evaluation set)")
    _config_args(p)
    p.add_argument("--run", help="run URI whose latest policy gives the SEAL row (omit: no SEAL row)")
    p.add_argument("--oracle", help="a fixed self-edit JSON object, or @FILE holding one (omit: no oracle row)")
    p.add_argument("--edits", type=int, default=None,
                   help="self-edits sampled per context (task) for the policy rows (default: 5, the paper's)")
    p.add_argument("--rows", default="policy,untrained,icl,oracle",
                   help="comma-separated rows to compute (default: all that apply)")
    p.add_argument("--out", help="also write every row, with per-edit details, to this JSON file")

    p = sub.add_parser("eval-knowledge", help="the paper's knowledge table: base, passage only, passage + "
                       "self-edits from files, policies or a teacher, with 95%% CIs")
    p.add_argument("config", nargs="?",
                   help="YAML run config with task.name: knowledge (model, inner loop, grading); omit to go "
                   "on with the evaluation already planned at --out")
    _config_args(p)
    p.add_argument("--out", required=True, help="the evaluation's folder: a local path, file:// or s3:// URI")
    p.add_argument("--passages", help="evaluation passages, SQuAD or paper-edits form (default: the first "
                   "--edits-file, else task.data)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N passages")
    p.add_argument("--edits-file", dest="edit_files", action="append", default=[], metavar="FILE",
                   help="self-edits in the paper-edits form (e.g. paper-edits/gpt4_1_val.json); one row each "
                   "(repeat it, or separate files with commas)")
    p.add_argument("--policy", action="append", default=[], metavar="base|RUN@R",
                   help="sample self-edits now from the base model ('base') or round R's policy of a run "
                   "(repeat it, or separate them with commas)")
    p.add_argument("--teacher", help="OpenAI-compatible base URL whose chat model writes self-edits")
    p.add_argument("--teacher-model", help="with --teacher: the model name (e.g. gpt-4.1)")
    p.add_argument("--edits", type=int, default=5, help="self-edits per passage (default 5)")
    p.add_argument("--fits", type=int, default=None, help="LoRA fits per self-edit (default: inner.fits)")
    p.add_argument("--shard-size", type=int, default=4, help="passages per shard of a row (default 4)")
    p.add_argument("--plan-only", action="store_true", help="plan only (with --out-dir: write shards.json)")
    p.add_argument("--out-dir", help="with --plan-only: write shards.json, the list Argo fans out over")
    p.add_argument("--max-pods", type=int, default=None, help="with --out-dir: at most this many shard pods")
    p.add_argument("--shard", type=shard_range, help="run only these shards (A or A-B), then stop")
    p.add_argument("--join", action="store_true", help="only write the table from finished shards")
    p.add_argument("--plot", help="also write the plot to this local PNG (it is always in --out)")
    p.add_argument("--setting", choices=("single", "cpt", "continual"), default=None,
                   help="single: one passage per fit (default); cpt: one update on all passages, the paper's "
                   "continued pretraining; continual: passages one after another, the retention matrix")
    p.add_argument("--update", choices=cpt.UPDATES, default="lora",
                   help="cpt: one LoRA adapter (default) or full fine-tuning (set a small inner.lr)")
    p.add_argument("--train", action="store_true", help="cpt: only train the rows' updates (the GPU pod), then stop")
    p.add_argument("--steps", type=int, default=8, help="continual: passages per sequence, n (default 8)")
    p.add_argument("--sequences", type=int, default=3, help="continual: sequences (seeds) per edit source (default 3)")

    p = sub.add_parser("init", help="write run.json for a run (once)")
    p.add_argument("--run", required=True, help="run URI: <store>/<run_id>")
    p.add_argument("--config", required=True,
                   help="YAML run config, or the config itself as one line of JSON (what `seal submit` passes)")
    _config_args(p)

    p = sub.add_parser("plan", help="choose a round's contexts and shards; print shard lists")
    p.add_argument("--run", help="run URI: <store>/<run_id>, e.g. s3://bucket/runs/r1")
    p.add_argument("--round", type=int, help="round number, from 0")
    p.add_argument("--out", help="also write the shard lists JSON to this file")
    p.add_argument("--out-dir", help="write sample.json and adapt.json here: the lists Argo fans out over")
    p.add_argument("--max-pods", type=int, default=None,
                   help="with --out-dir: at most this many pods per stage (consecutive shards share a pod)")
    p.add_argument("--dry-run", action="store_true",
                   help="print pods per stage and the workflow object's estimated size; needs --run or --config")
    p.add_argument("--config", help="with --dry-run: a YAML run config instead of a run")
    _config_args(p)
    p.add_argument("--workflow", help="with --dry-run: the workflow file (default: workflows/restem.yaml)")
    p.add_argument("--gpu", help="with --dry-run: also a GPU pod's memory plan on this GPU type (h100-80gb, "
                   "a100-40gb, h200-141gb, ... or a size in GiB) and the GPU types the config fits")
    p.add_argument("--row-tokens", type=int, default=None,
                   help="with --gpu: the longest training row in tokens (default: model.max_length)")
    _redo_arg(p)

    p = sub.add_parser("sample", help="sample self-edits for one shard of contexts")
    _stage_args(p, shard=True)

    p = sub.add_parser("adapt", help="fit and score one shard of candidate self-edits")
    _stage_args(p, shard=True)

    p = sub.add_parser("improve", help="filter a round's scores, run the M-step, write the summary")
    _stage_args(p)

    p = sub.add_parser("finish", help="record a run's final status in run.json (the workflow's exit handler)")
    p.add_argument("--run", required=True, help="run URI: <store>/<run_id>")
    p.add_argument("--status", required=True, help="Succeeded, Failed or Error (Argo's {{workflow.status}})")

    p = sub.add_parser("submit", help="submit workflows/restem.yaml for a config to Argo; print the workflow name")
    p.add_argument("config", help="YAML run config (its store must be s3://)")
    _config_args(p)
    p.add_argument("-p", "--parameter", dest="parameters", action="append", default=[], metavar="NAME=VALUE",
                   help="a workflow parameter, e.g. -p image=ghcr.io/you/seal:0.1.0 -p max-pods-per-stage=16")
    p.add_argument("--argo-server", default=os.environ.get("ARGO_SERVER"),
                   help="Argo Server URL (default: $ARGO_SERVER; token from $ARGO_TOKEN); "
                   "without one, the Workflow is created through the Kubernetes API (kubeconfig or in-cluster)")
    p.add_argument("--namespace", default=os.environ.get("ARGO_NAMESPACE", "argo"),
                   help="namespace (default: $ARGO_NAMESPACE or argo)")
    p.add_argument("--workflow", help="the workflow file (default: workflows/restem.yaml of this checkout)")
    p.add_argument("--print", dest="print_only", action="store_true",
                   help="print the filled-in, checked Workflow as YAML instead of submitting it "
                   "(for `argo submit FILE` or `kubectl create -f -`)")
    p.add_argument("--model-cache-claim", metavar="PVC",
                   help="mount this PersistentVolumeClaim at /cache (model weights) in every pod instead of "
                   "an emptyDir each, so the base model is downloaded once (workflows/model-cache.yaml makes one)")

    p = sub.add_parser("status", help="a run's progress per round, read from the store alone")
    p.add_argument("run", help="run URI: <store>/<run_id>")

    p = sub.add_parser("verify", help="check every object of a run (hashes, schemas, rows against the plan); "
                       "name each damaged one and the command that redoes it (exit 65 if any)")
    p.add_argument("run", help="run URI: <store>/<run_id>")
    return parser


def split_run_uri(uri: str) -> tuple[str, str]:
    """'s3://b/runs/r1' -> ('s3://b/runs', 'r1')."""
    parent, _, run_id = uri.rstrip("/").rpartition("/")
    if not parent or not run_id:
        raise ConfigError(f"--run {uri}: expected <store>/<run_id>, e.g. file:///data/runs/r1")
    return parent, run_id


def _runtime(run_uri: str) -> Runtime:
    """Config from the run's run.json (written by `seal init`), and a Runtime over it."""
    run, cfg = run_config(run_uri, f"run `seal init --run {run_uri} --config FILE` first")
    return Runtime(cfg, run)


# --- one handler per subcommand: parse what argparse left as text, call the library, print


def cmd_run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    rows = run_local(cfg)
    print(f"run {cfg.run_uri}")
    print(round_table(rows))
    if args.plot:
        print(f"plot: {plot_rewards(rows, args.plot)}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    rows = summaries(open_store(args.run))
    if not rows:
        raise ConfigError(f"{args.run}: no finished round (no round-0/summary.json): check the run URI")
    print(round_table(rows))
    _, run_id = split_run_uri(args.run)
    print(f"plot: {plot_rewards(rows, args.plot or f'{run_id}-rewards.png')}")
    return 0


def cmd_tiny_model(args: argparse.Namespace) -> int:
    corpus = None
    if args.corpus:
        try:
            with open(args.corpus, encoding="utf-8") as f:
                corpus = [line for line in f.read().splitlines() if line.strip()]
        except OSError as e:
            raise ConfigError(f"--corpus {args.corpus}: cannot read it ({e.strerror})") from None
    print(build_tiny_model(args.out, args.hidden, args.layers, args.seed, args.vocab, corpus))
    return 0


def cmd_world_report(args: argparse.Namespace) -> int:
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {args.seeds}: expected comma-separated integers, e.g. 0,1,2") from None
    run, _ = load_run(args.run, "run `seal run CONFIG` first")
    result = world_eval.evaluate(run, seeds, args.limit)
    print(world_eval.table(result))
    _, run_id = split_run_uri(args.run)
    print(f"plot: {world_eval.plot(result, args.plot or f'{run_id}-world.png')}")
    return 0


def cmd_config_help(args: argparse.Namespace) -> int:
    print("\n".join(describe_fields()))
    return 0


def cmd_eval_arc(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    rows = tuple(r.strip() for r in args.rows.split(",") if r.strip())
    bad = [r for r in rows if r not in arc_eval.ROWS]
    if bad or not rows:
        raise ConfigError(f"--rows {args.rows}: choose from {','.join(arc_eval.ROWS)}")
    if args.edits is not None and args.edits < 1:
        raise ConfigError(f"--edits {args.edits}: must be at least 1")
    if args.edits is not None:
        check_flag_bound("--edits", args.edits)
    oracle = args.oracle
    if oracle is not None and oracle.startswith("@"):
        try:
            with open(oracle[1:], encoding="utf-8") as f:
                oracle = f.read()
        except OSError as e:
            raise ConfigError(f"--oracle {oracle}: cannot read it ({e.strerror})") from None
    results = arc_eval.evaluate(cfg, args.run, oracle, args.edits or arc_eval.PAPER_EDITS, rows)
    print(arc_eval.table(results))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
        print(f"details: {args.out}")
    return 0


def cmd_eval_knowledge(args: argparse.Namespace) -> int:
    if (args.teacher is None) != (args.teacher_model is None):
        raise ConfigError("--teacher URL and --teacher-model NAME go together")
    plan_args = None
    # Repeated, or comma-separated in one value (what workflows/eval-knowledge.yaml passes).
    files = [f.strip() for v in args.edit_files for f in v.split(",") if f.strip()]
    policies = [p.strip() for v in args.policy for p in v.split(",") if p.strip()]
    # A config, an override or a row asks for a plan (a default config is the CPU demo's); bare
    # `--out URI` goes on with the evaluation planned there (what the workflow's pods run).
    if args.config or args.overrides or files or policies or args.teacher or args.passages:
        if args.config and args.config.lstrip().startswith("{"):
            cfg = submit.inline_config(args.config, args.overrides)
        else:
            cfg = load_config(args.config, args.overrides)
        plan_args = dict(passages=args.passages or (files[0] if files else cfg.task.data),
                         limit=args.limit, edit_files=files, policies=policies,
                         teacher=(args.teacher, args.teacher_model) if args.teacher else None,
                         edits=args.edits, fits=args.fits or cfg.inner.fits, shard_size=args.shard_size)
        setting_plan_args(args, cfg, plan_args, files, policies)
    out = open_store(args.out)
    if plan_args is not None:
        knowledge_eval.plan(out, cfg, **plan_args)
    setting = knowledge_eval.read_spec(out)[0].get("setting", "single") if out.exists("eval.json") else "single"
    if setting != "single" and not args.plan_only:
        return eval_other_setting(args, out, setting)
    if args.plan_only or args.join:
        spec, _, _ = knowledge_eval.read_spec(out)
        if args.plan_only:
            if args.max_pods is not None and args.max_pods < 1:
                raise ConfigError(f"--max-pods {args.max_pods}: must be at least 1")
            items = fanout_groups(len(spec["shards"]), args.max_pods)
            if args.out_dir:
                os.makedirs(args.out_dir, exist_ok=True)
                with open(os.path.join(args.out_dir, "shards.json"), "w") as f:
                    f.write(json.dumps(items, separators=(",", ":")))
            print(json.dumps({"shards": len(spec["shards"]), "pods": items}))
            return 0
        table = knowledge_eval.join(out)
    else:
        table = knowledge_eval.evaluate(args.out, None, args.shard)
        if table is None:
            print(f"{args.out}: shards {args.shard[0]}-{args.shard[-1]} done; others remain" if args.shard
                  else f"{args.out}: shards remain")
            return 0
    return print_table(args, out, table)


def print_table(args: argparse.Namespace, out: Any, table: dict[str, Any]) -> int:
    print(knowledge_eval.table_text(table))
    print(f"results: {out.uri}/table.json (per question: {out.uri}/results/)")
    if args.plot:
        print(f"plot: {knowledge_eval.plot(table, args.plot)}")
    return 0


def setting_plan_args(args: argparse.Namespace, cfg: Any, plan_args: dict, files: list[str],
                      policies: list[str]) -> None:
    """The CPT and continual settings' additions to the single-passage plan."""
    if args.setting == "cpt":
        plan_args["extra"] = {"setting": "cpt", "update": args.update}
    elif args.setting == "continual":
        if args.steps < 1 or args.sequences < 1:
            raise ConfigError("--steps and --sequences must be at least 1")
        rows = knowledge_eval.row_specs(files, policies, plan_args["teacher"])[2:]  # no base, no passage-only
        if not rows:
            raise ConfigError("--setting continual: name the self-edits' source: --policy base, --policy RUN@R "
                              "or --edits-file FILE")
        plan_args.update(rows=rows, edits=1, fits=1,
                         units=continual.sequence_units(args.steps, args.sequences, cfg.seed),
                         extra={"setting": "continual", "steps": args.steps, "sequences": args.sequences})


def eval_other_setting(args: argparse.Namespace, out: Any, setting: str) -> int:
    """`eval-knowledge` on a CPT or continual plan: run, train, a shard's share, or the join."""
    if setting == "continual":
        result = continual.write_matrix(out) if args.join else continual.evaluate(args.out, args.shard)
        if result is None:
            print(f"{args.out}: units {args.shard[0]}-{args.shard[-1]} done; others remain")
            return 0
        print(continual.matrix_text(result))
        print(f"results: {out.uri}/matrix.json, heat map: {out.uri}/matrix.png (per step: {out.uri}/continual/)")
        if args.plot:
            print(f"plot: {continual.heatmap(result, args.plot)}")
        return 0
    table = knowledge_eval.write_table(out) if args.join else cpt.evaluate(args.out, args.shard, args.train)
    if table is None:
        print(f"{args.out}: " + ("updates trained" if args.train else "shards done") + "; others remain")
        return 0
    return print_table(args, out, table)


def cmd_init(args: argparse.Namespace) -> int:
    store, run_id = split_run_uri(args.run)
    place = [*args.overrides, f"store={store}", f"run_id={run_id}"]
    if args.config.lstrip().startswith("{"):
        cfg = submit.inline_config(args.config, place)
    else:
        cfg = load_config(args.config, place)
    metrics.stage_call("init", {"run": cfg.run_id, "stage": "init"}, init_run, open_store(args.run), cfg)
    print(args.run)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    if args.dry_run:
        if bool(args.run) == bool(args.config):
            raise ConfigError("seal plan --dry-run needs exactly one of --run URI or --config FILE")
        if args.config:
            cfg, source = load_config(args.config, args.overrides), args.config
        else:
            if args.overrides:
                raise ConfigError("--set goes with --config; a run's config is fixed in its run.json")
            _, cfg = run_config(args.run, "check the run URI, or pass --config FILE")
            source = args.run
        print(submit.dry_run(cfg, source, args.workflow, args.max_pods, args.gpu, args.row_tokens))
        return 0
    if args.run is None or args.round is None:
        raise ConfigError("seal plan needs --run URI and --round R (or --dry-run with --config FILE)")
    plan = plan_round(_runtime(args.run), args.round, redo=args.redo)
    text = json.dumps(shard_indices(plan))
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    if args.out_dir:
        submit.write_fanout(plan, args.out_dir, args.max_pods)
    print(text)
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    rt = _runtime(args.run)
    for shard in args.shard:
        sample_shard(rt, args.round, shard, redo=args.redo)
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    rt = _runtime(args.run)
    for shard in args.shard:
        adapt_shard(rt, args.round, shard, redo=args.redo)
    return 0


def cmd_improve(args: argparse.Namespace) -> int:
    print(json.dumps(improve_round(_runtime(args.run), args.round, redo=args.redo), sort_keys=True))
    return 0


def cmd_finish(args: argparse.Namespace) -> int:
    # The exit handler pushes its outcome like every stage.
    group = {"run": split_run_uri(args.run)[1], "stage": "finish"}
    print(metrics.stage_call("finish", group, submit.finish, args.run, args.status))
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    out = submit.submit(cfg, args.workflow, args.parameters, args.argo_server, args.namespace, args.print_only,
                        args.model_cache_claim)
    print(out, end="" if args.print_only else "\n")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    print(run_status(args.run))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    report = verify_run(args.run)
    print(report.text())
    if report.problems:
        raise DataError(f"{len(report.problems)} damaged object(s) in {args.run}, listed above with "
                        "the command that redoes each")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run, "report": cmd_report, "tiny-model": cmd_tiny_model, "world-report": cmd_world_report,
    "config-help": cmd_config_help, "eval-arc": cmd_eval_arc, "eval-knowledge": cmd_eval_knowledge,
    "init": cmd_init, "plan": cmd_plan,
    "sample": cmd_sample, "adapt": cmd_adapt, "improve": cmd_improve, "finish": cmd_finish,
    "submit": cmd_submit, "status": cmd_status, "verify": cmd_verify,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # Library chatter (weight-loading bars, advisory warnings) hides seal's own progress.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    previous = _exit_75_on_sigterm()
    try:
        _metrics_out(args)
        return COMMANDS[args.command](args)
    except SealError as e:
        return _fail(f"seal: error: {_one_line(e)}", e.exit_code, argv is None)
    except OSError as e:  # a local file outside the store (--out, --plot, a model folder)
        where = e.filename or "a local file"
        return _fail(f"seal: error: cannot access {where}: {e.strerror or e}",
                     EXIT_TRANSIENT if e.errno in TRANSIENT_ERRNOS else EXIT_USAGE, argv is None)
    except KeyboardInterrupt:
        print("seal: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _fail(line: str, code: int, process_ends: bool) -> int:
    """Print the one error line. When the process ends with it, mute logging: libraries' atexit
    handlers (torch, vLLM engine shutdown) would otherwise log after it, and the error line is
    what Argo and users read last."""
    print(line, file=sys.stderr, flush=True)
    if process_ends:
        logging.disable(logging.CRITICAL)
    return code


def _one_line(e: Exception) -> str:
    """Messages quote inputs (keys, values, server replies): keep them on one bounded line."""
    text = " ".join(str(e).split())
    return text if len(text) <= 2000 else text[:2000] + "..."


def _exit_75_on_sigterm() -> Any:
    """Kubernetes stops a preempted or evicted pod with SIGTERM: end with exit code 75 (transient)
    so Argo's retryStrategy retries it; the store holds only whole outputs, so the retry resumes."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def terminated(signum: int, frame: Any) -> None:
        raise TransientError("terminated by SIGTERM (pod preempted or evicted?): rerun the same command to resume")

    return signal.signal(signal.SIGTERM, terminated)


def _metrics_out(args: argparse.Namespace) -> None:
    """Serve /metrics when a port is set ($SEAL_METRICS_PORT or `run --metrics-port`); stages push
    to $SEAL_PUSHGATEWAY (or `run --pushgateway`) themselves. See seal/metrics.py."""
    if getattr(args, "pushgateway", None):
        os.environ[metrics.PUSHGATEWAY_ENV] = args.pushgateway
    metrics.serve(getattr(args, "metrics_port", None))


if __name__ == "__main__":
    sys.exit(main())
