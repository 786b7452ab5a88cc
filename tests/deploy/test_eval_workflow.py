"""workflows/eval-knowledge.yaml without a cluster, checked as restem.yaml is: Argo's schema, every
command parsed by seal's own CLI parser, every reference declared, the retry and GPU rules; then
run end to end by the local executor against a real S3 server on a tiny model, where it must
write the table a local `seal eval-knowledge` writes."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from argo_local import LocalArgo, evaluate
from conftest import TINY

from seal.cli import build_parser, main
from seal.cluster.workflow import (
    container_commands,
    declared_parameters,
    load_workflow,
    reference_errors,
    schema_errors,
)
from seal.config import load_config
from seal.store import open_store

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / "workflows/eval-knowledge.yaml"
ASSETS = ROOT / "tests/assets"
EDITS = [str(ASSETS / "paper_edits_base_sample.json"), str(ASSETS / "paper_edits_gpt4_1_sample.json")]
S3_VARS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")


@pytest.fixture
def wf():
    return load_workflow(WORKFLOW)


def template(doc, name):
    return next(t for t in doc["spec"]["templates"] if t["name"] == name)


def test_schema_and_references(wf):
    assert schema_errors(wf) == []
    assert reference_errors(wf) == []


def test_every_command_parses_with_seals_cli(wf):
    params = {k: v or f"s3://bucket/{k}" for k, v in declared_parameters(wf).items()}
    params["edits-files"] = "s3://b/a.json,s3://b/b.json"
    samples = {"inputs.parameters.shard": "4-7"}
    commands = container_commands(wf)
    assert set(commands) == {"plan", "shard", "join"}
    parser = build_parser()
    parsed = {}
    for name, argv in commands.items():
        filled = [re.sub(r"\{\{(.*?)\}\}", lambda m: samples.get(m.group(1)) or params[m.group(1).split(".")[-1]], a)
                  for a in argv[1:]]
        parsed[name] = parser.parse_args(filled)
        assert parsed[name].command == "eval-knowledge" and parsed[name].out == "s3://bucket/out"
    assert parsed["plan"].plan_only and parsed["plan"].out_dir == "/tmp/seal-eval" and parsed["plan"].config
    assert parsed["plan"].edit_files == ["s3://b/a.json,s3://b/b.json"] and parsed["plan"].max_pods == 64
    assert parsed["shard"].shard == [4, 5, 6, 7] and parsed["shard"].config is None
    assert parsed["join"].join and parsed["join"].shard is None
    out = template(wf, "plan")["outputs"]["parameters"][0]
    assert out["valueFrom"]["path"] == "/tmp/seal-eval/shards.json"


def test_retries_transient_failures_only_and_gpu_pods_are_scheduled_like_restems(wf):
    for t in (t for t in wf["spec"]["templates"] if "container" in t):
        def decide(code, status="Failed", message=""):
            last = {"lastRetry.exitCode": code, "lastRetry.status": status, "lastRetry.message": message}
            return evaluate(t["retryStrategy"]["expression"], last.__getitem__)  # noqa: B023
        assert decide("75") and decide("-1", "Error", "pod deleted") and decide("137", "Failed", "Evicted")
        assert not decide("2") and not decide("65") and not decide("137", "Failed", "OOMKilled")
        assert int(t["activeDeadlineSeconds"]) > 0
        assert t["container"]["envFrom"] == [{"secretRef": {"name": "{{workflow.parameters.s3-secret}}"}}]
    shard = template(wf, "shard")
    assert shard["timeout"] == "{{workflow.parameters.gpu-pending-timeout}}"
    assert shard["container"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    values = declared_parameters(wf)
    patch = re.sub(r"\{\{workflow\.parameters\.([\w-]+)\}\}", lambda m: values[m.group(1)], shard["podSpecPatch"])
    assert json.loads(patch)["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert wf["spec"]["podGC"]["strategy"] == "OnPodSuccess"


@pytest.mark.slow
def test_on_the_local_executor_it_writes_the_table_a_local_run_writes(tmp_path, s3_env, wf):
    sets = [f"model.base={TINY}", "model.max_length=256", "task.answer_tokens=8", "sampling.max_new_tokens=24",
            "inner.rank=4", "inner.alpha=8", "inner.epochs=1", "inner.fits=2"]
    folder = str(tmp_path / "local")
    assert main(["eval-knowledge", "--out", folder, *[x for s in sets for x in ("--set", s)], "--edits-file",
                 ",".join(EDITS), "--policy", "base", "--limit", "2", "--edits", "2", "--fits", "2",
                 "--shard-size", "1"]) == 0
    cfg = load_config(None, sets)
    params = {"out": f"{s3_env}/eval", "config": json.dumps(cfg.model_dump(mode="json")), "passages": "",
              "edits-files": ",".join(EDITS), "policies": "base", "limit": "2", "edits": "2", "fits": "2",
              "shard-size": "1", "max-pods": "4"}
    secret = {var: os.environ[var] for var in S3_VARS}
    result = LocalArgo(wf, params, secrets={"seal-s3": secret}, workdir=tmp_path / "pods").run()
    assert result.phase == "Succeeded", result.message
    ran = [(p.template, p.command[p.command.index("--shard") + 1] if "--shard" in p.command else "")
           for p in result.pods]
    assert ran == [("plan", ""), ("shard", "0-2"), ("shard", "3-5"), ("shard", "6-7"), ("shard", "8-9"),
                   ("join", "")]
    remote, local = open_store(f"{s3_env}/eval"), open_store(folder)
    assert remote.read_json("table.json") == local.read_json("table.json")
    for s in range(10):
        key = f"results/{s:05d}.jsonl"
        strip = [{k: v for k, v in line.items() if k != "shard_s"} for line in remote.read_jsonl(key)]
        assert strip == [{k: v for k, v in line.items() if k != "shard_s"} for line in local.read_jsonl(key)]
