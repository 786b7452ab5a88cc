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
import yaml
from argo_local import Failure, LocalArgo, evaluate
from conftest import TINY

from seal.cli import build_parser, main
from seal.cluster.workflow import (
    container_commands,
    declared_parameters,
    load_workflow,
    reference_errors,
    schema_errors,
    with_model_cache_claim,
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
        evicted = Failure.evicted()
        assert decide("75") and decide("-1", "Error", "pod deleted") and decide("137", "Failed", evicted.message)
        assert not decide("2") and not decide("65") and not decide("137", "Failed", Failure.oom_killed().message)
        assert int(t["activeDeadlineSeconds"]) > 0
        assert t["container"]["envFrom"] == [{"secretRef": {"name": "{{workflow.parameters.s3-secret}}"}}]
    shard = template(wf, "shard")
    assert shard["container"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    values = declared_parameters(wf)
    patch = re.sub(r"\{\{workflow\.parameters\.([\w-]+)\}\}", lambda m: values[m.group(1)], shard["podSpecPatch"])
    assert json.loads(patch)["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert json.loads(patch)["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == values["shard-gpus"]
    assert wf["spec"]["podGC"]["strategy"] == "OnPodSuccess"


def test_it_shares_restems_retry_security_volumes_and_pod_shapes(wf):
    """The blocks both workflows need are restem.yaml's, word for word, so what test_workflow.py and
    test_workflow_time.py prove of restem.yaml's (retries on real pod messages, no template
    timeout or maxDuration, the images' user, writable /tmp and /cache, no API token in main
    containers) holds here too, and a fix to one that misses the other fails here."""
    restem = load_workflow()
    r, e = restem["spec"], wf["spec"]
    for key in ("serviceAccountName", "automountServiceAccountToken", "executor", "securityContext", "podGC"):
        assert e[key] == r[key], key
    assert e["volumes"] == r["volumes"]  # config, seal-tmp and seal-cache, by the names the chart and submit swap
    rt = {t["name"]: t for t in r["templates"]}
    for t in e["templates"]:
        assert "parallelism" not in t and "timeout" not in t, t["name"]  # max-pods bounds the pods instead
        if "container" not in t:
            continue
        assert t["retryStrategy"] == rt["adapt"]["retryStrategy"], t["name"]
        assert t["container"]["volumeMounts"] == rt["adapt"]["container"]["volumeMounts"], t["name"]
        assert t["container"]["envFrom"] == rt["adapt"]["container"]["envFrom"], t["name"]
        assert isinstance(t["activeDeadlineSeconds"], str), t["name"]
    shard = template(wf, "shard")
    assert shard["container"]["resources"] == rt["adapt"]["container"]["resources"]  # ephemeral storage for /cache
    assert shard["activeDeadlineSeconds"] == rt["adapt"]["activeDeadlineSeconds"]
    for name in ("plan", "join"):
        assert template(wf, name)["container"]["resources"] == rt["init"]["container"]["resources"]
    ours, theirs = declared_parameters(wf), declared_parameters(restem)
    for name in ("image", "config", "config-map", "gpu-tolerations", "s3-secret", "service-account"):
        assert ours[name] == theirs[name], name
    assert "gpu-pending-timeout" not in ours
    # `*-gpus`: what `seal submit` allows (0 or 1); seal runs a pod on one GPU
    assert [n for n in ours if n.endswith("gpus")] == ["shard-gpus"] and ours["shard-gpus"] in ("0", "1")


def test_a_model_cache_claim_replaces_cache_in_every_pod(wf):
    """The swap `seal submit --model-cache-claim` (and the chart) make, by the volume's name."""
    doc = with_model_cache_claim(wf, "seal-models")
    volumes = {v["name"]: v for v in doc["spec"]["volumes"]}
    assert volumes["seal-cache"] == {"name": "seal-cache", "persistentVolumeClaim": {"claimName": "seal-models"}}
    for t in (t for t in doc["spec"]["templates"] if "container" in t):
        assert {"name": "seal-cache", "mountPath": "/cache"} in t["container"]["volumeMounts"], t["name"]
    assert schema_errors(doc) == [] and reference_errors(doc) == []


def test_seal_submit_fills_it_with_the_config_a_claim_and_one_gpu(capsys):
    """`seal submit --workflow workflows/eval-knowledge.yaml`: the config's JSON, -p out, the claim
    swapped in by name, restem's refusal of a second GPU; nothing is contacted with --print."""
    base = ["submit", str(ROOT / "configs/squad-qwen2.5-7b.yaml"), "--workflow", str(WORKFLOW), "--print"]
    assert main([*base, "-p", "out=s3://b/evals/t", "-p", "max-pods=8", "--model-cache-claim", "seal-models"]) == 0
    doc = yaml.safe_load(capsys.readouterr().out)
    values = declared_parameters(doc)
    assert values["out"] == "s3://b/evals/t" and values["max-pods"] == "8"
    config = load_config(ROOT / "configs/squad-qwen2.5-7b.yaml")
    assert json.loads(values["config"]) == json.loads(json.dumps(config.model_dump(mode="json")))
    volumes = {v["name"]: v for v in doc["spec"]["volumes"]}
    assert volumes["seal-cache"]["persistentVolumeClaim"] == {"claimName": "seal-models"}
    assert main([*base, "-p", "out=s3://b/e", "-p", "shard-gpus=2"]) == 2
    assert "shard-gpus=2: seal runs each pod on one GPU" in capsys.readouterr().err
    assert main(base) == 2 and "pass -p out=VALUE" in capsys.readouterr().err


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
