"""The `seal` command: one subcommand per stage. It parses, validates and calls the library.

Every failure the user can fix ends in one line on stderr and an exit code from DESIGN.md
(2 usage/config, 65 bad data, 75 transient), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from seal.errors import ConfigError, SealError


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set rounds=1 --set inner.lr=3e-4")


def _stage_args(p: argparse.ArgumentParser, shard: bool = False) -> None:
    p.add_argument("--run", required=True, help="run URI: <store>/<run_id>, e.g. s3://bucket/runs/r1")
    p.add_argument("--round", type=int, required=True, help="round number, from 0")
    if shard:
        p.add_argument("--shard", type=int, required=True, help="shard number, from 0")


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

    p = sub.add_parser("config-help", help="list every config key with its default and meaning")

    p = sub.add_parser("init", help="write run.json for a run (once)")
    p.add_argument("--run", required=True, help="run URI: <store>/<run_id>")
    p.add_argument("--config", required=True, help="YAML run config")
    _config_args(p)

    p = sub.add_parser("plan", help="choose a round's contexts and shards; print shard lists")
    _stage_args(p)
    p.add_argument("--out", help="also write the shard lists JSON to this file (for Argo)")

    p = sub.add_parser("sample", help="sample self-edits for one shard of contexts")
    _stage_args(p, shard=True)

    p = sub.add_parser("adapt", help="fit and score one shard of candidate self-edits")
    _stage_args(p, shard=True)

    p = sub.add_parser("improve", help="filter a round's scores, run the M-step, write the summary")
    _stage_args(p)
    return parser


def split_run_uri(uri: str) -> tuple[str, str]:
    """'s3://b/runs/r1' -> ('s3://b/runs', 'r1')."""
    parent, _, run_id = uri.rstrip("/").rpartition("/")
    if not parent or not run_id:
        raise ConfigError(f"--run {uri}: expected <store>/<run_id>, e.g. file:///data/runs/r1")
    return parent, run_id


def _runtime(run_uri: str) -> Any:
    """Config from the run's run.json (written by `seal init`), and a Runtime over it."""
    from seal import stages
    from seal.config import from_dict
    from seal.store import open_store

    run = open_store(run_uri)
    if not run.exists("run.json"):
        raise ConfigError(f"{run_uri}/run.json does not exist: run `seal init --run {run_uri} --config FILE` first")
    cfg = from_dict(run.read_json("run.json")["config"])
    return stages.Runtime(cfg, run)


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
    try:
        _metrics_out(args)
        return _dispatch(args)
    except SealError as e:
        print(f"seal: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("seal: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def _metrics_out(args: argparse.Namespace) -> None:
    """Serve /metrics when a port is set ($SEAL_METRICS_PORT or `run --metrics-port`); stages push
    to $SEAL_PUSHGATEWAY (or `run --pushgateway`) themselves. See seal/metrics.py."""
    from seal import metrics

    if getattr(args, "pushgateway", None):
        os.environ[metrics.PUSHGATEWAY_ENV] = args.pushgateway
    metrics.serve(getattr(args, "metrics_port", None))


def _dispatch(args: argparse.Namespace) -> int:
    from seal import stages
    from seal.config import load_config

    if args.command == "run":
        from seal.local import print_table, run_local
        from seal.report import plot_rewards

        cfg = load_config(args.config, args.overrides)
        rows = run_local(cfg)
        print(f"run {cfg.run_uri}")
        print_table(rows)
        if args.plot:
            print(f"plot: {plot_rewards(rows, args.plot)}")
        return 0
    if args.command == "report":
        from seal.report import plot_rewards, round_table, summaries
        from seal.store import open_store

        rows = summaries(open_store(args.run))
        if not rows:
            raise ConfigError(f"{args.run}: no finished round (no round-0/summary.json): check the run URI")
        print(round_table(rows))
        _, run_id = split_run_uri(args.run)
        print(f"plot: {plot_rewards(rows, args.plot or f'{run_id}-rewards.png')}")
        return 0
    if args.command == "tiny-model":
        from seal.models import build_tiny_model

        corpus = None
        if args.corpus:
            try:
                with open(args.corpus, encoding="utf-8") as f:
                    corpus = [line for line in f.read().splitlines() if line.strip()]
            except OSError as e:
                raise ConfigError(f"--corpus {args.corpus}: cannot read it ({e.strerror})") from None
        out = build_tiny_model(args.out, args.hidden, args.layers, args.seed, args.vocab, corpus)
        print(out)
        return 0
    if args.command == "config-help":
        from seal.config import describe_fields

        print("\n".join(describe_fields()))
        return 0
    if args.command == "init":
        from seal.store import open_store

        store, run_id = split_run_uri(args.run)
        cfg = load_config(args.config, [*args.overrides, f"store={store}", f"run_id={run_id}"])
        stages.init_run(open_store(args.run), cfg)
        print(args.run)
        return 0
    rt = _runtime(args.run)
    if args.command == "plan":
        from seal.plan import shard_indices

        text = json.dumps(shard_indices(stages.plan_round(rt, args.round)))
        if args.out:
            with open(args.out, "w") as f:
                f.write(text)
        print(text)
    elif args.command == "sample":
        stages.sample_shard(rt, args.round, args.shard)
    elif args.command == "adapt":
        stages.adapt_shard(rt, args.round, args.shard)
    elif args.command == "improve":
        print(json.dumps(stages.improve_round(rt, args.round), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
