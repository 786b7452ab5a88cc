"""workflows/restem.yaml end to end without a cluster: the local Argo executor runs every pod's
command as a process against a real S3 server, 2 rounds on a tiny model, and the store ends up
holding exactly what `seal run` writes for the same config and seeds, artifact for artifact."""

from __future__ import annotations

import json
import os

import pytest
from argo_local import LocalArgo
from conftest import tiny_overrides
from run_checks import check_layout, sets, snapshot

from seal.cli import main
from seal.cluster.workflow import load_workflow, run_parameters
from seal.config import load_config
from seal.store import open_store

pytestmark = pytest.mark.slow

S3_VARS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")


def test_restem_yaml_on_the_local_executor_matches_seal_run(tmp_path, s3_env, capsys):
    folder = str(tmp_path / "runs")
    assert main(["run", *sets(tiny_overrides(folder))]) == 0
    reference = check_layout(f"{folder}/t")

    # The parameters `seal submit` would send, with 2 pods per stage: sample fans out over shards
    # "0","1" and adapt over "0-1","2" (one pod running two shards).
    cfg = load_config(None, tiny_overrides(s3_env))
    doc = load_workflow()
    params = run_parameters(cfg, doc, {"max-pods-per-stage": "2"})
    secret = {var: os.environ[var] for var in S3_VARS}
    result = LocalArgo(doc, params, secrets={"seal-s3": secret}, workdir=tmp_path / "pods").run()
    assert result.phase == "Succeeded", result.message
    assert all("{{" not in json.dumps(m) for m in result.metrics)  # the controller's metrics resolve too
    ran = [(p.template, p.command[p.command.index("--shard") + 1] if "--shard" in p.command else "")
           for p in result.pods]
    one_round = [("plan", ""), ("sample", "0"), ("sample", "1"), ("adapt", "0-1"), ("adapt", "2"), ("improve", "")]
    assert ran == [("init", ""), *one_round, *one_round, ("finish", "")]

    assert check_layout(f"{s3_env}/t") == reference  # same edits, rewards, kept set, summaries
    assert snapshot(open_store(f"{s3_env}/t")) == snapshot(open_store(f"{folder}/t"))  # every artifact
    meta = open_store(f"{s3_env}/t").read_json("run.json")
    assert meta["status"] == "succeeded"  # written by the exit handler

    capsys.readouterr()
    assert main(["status", f"{s3_env}/t"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"run {s3_env}/t: succeeded, 2 rounds")
    for r in range(2):
        summary = open_store(f"{s3_env}/t").read_json(f"round-{r}/summary.json")
        assert lines[3 + r].split() == [str(r), "done", "2/2", "3/3", "done", "6/6", f"{summary['mean_reward']:.3f}",
                                        f"{summary['max_reward']:.3f}", "3"]


def test_a_failing_stage_fails_the_workflow_and_the_exit_handler_records_it(tmp_path, s3_env):
    """A permanent error (exit 2: the data file does not exist) is not retried; run.json says failed."""
    cfg = load_config(None, [*tiny_overrides(s3_env, "bad"), "task.data=s3://no-such-bucket-x/d.json"])
    params = run_parameters(cfg, load_workflow(), {})
    secret = {var: os.environ[var] for var in S3_VARS}
    result = LocalArgo(load_workflow(), params, secrets={"seal-s3": secret}, workdir=tmp_path / "pods").run()
    assert result.phase == "Failed"
    assert [(p.template, p.exit_code, p.attempt) for p in result.pods] == [("init", 0, 0), ("plan", 2, 0),
                                                                           ("finish", 0, 0)]
    meta = open_store(f"{s3_env}/bad").read_json("run.json")
    assert meta["status"] == "failed" and "Failed" in meta["message"]
    assert json.loads(params["config"])["task"]["data"] == "s3://no-such-bucket-x/d.json"
