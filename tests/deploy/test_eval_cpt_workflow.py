"""workflows/eval-cpt.yaml without a cluster: Argo's schema, every command parsed by seal's own CLI
parser, every reference declared, restem.yaml's rules (retries, no template timeout, no
backoff.maxDuration, volumes, user, no API token); then run end to end by the local executor
against a real S3 server on a tiny model, where it must write the table a local run writes."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from argo_local import LocalArgo
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
EDITS = str(ROOT / "tests/assets/paper_edits_base_sample.json")
S3_VARS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")


@pytest.fixture
def wf():
    return load_workflow(ROOT / "workflows/eval-cpt.yaml")


def template(doc, name):
    return next(t for t in doc["spec"]["templates"] if t["name"] == name)


def test_schema_references_and_commands(wf):
    assert schema_errors(wf) == []
    assert reference_errors(wf) == []
    params = {k: v or f"s3://bucket/{k}" for k, v in declared_parameters(wf).items()}
    commands = container_commands(wf)
    assert set(commands) == {"plan", "train", "score", "join"}
    parser = build_parser()
    parsed = {}
    for name, argv in commands.items():
        filled = [re.sub(r"\{\{(.*?)\}\}", lambda m: {"inputs.parameters.shard": "4-7"}.get(m.group(1))
                         or params[m.group(1).split(".")[-1]], a) for a in argv[1:]]
        parsed[name] = parser.parse_args(filled)
        assert parsed[name].command == "eval-knowledge" and parsed[name].out == "s3://bucket/out"
    assert parsed["plan"].setting == "cpt" and parsed["plan"].plan_only and parsed["plan"].update == "lora"
    assert parsed["train"].train and parsed["train"].config is None
    assert parsed["score"].shard == [4, 5, 6, 7] and parsed["join"].join


def test_restems_rules(wf):
    restem = load_workflow(ROOT / "workflows/restem.yaml")
    ref = template(restem, "init")["retryStrategy"]
    spec = wf["spec"]
    for key in ("securityContext", "automountServiceAccountToken", "executor", "serviceAccountName"):
        assert spec[key] == restem["spec"][key], key
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes["seal-tmp"] and "emptyDir" in volumes["seal-cache"]
    for t in (t for t in spec["templates"] if "container" in t):
        assert t["retryStrategy"] == ref, t["name"]  # same retries, backoff without maxDuration, affinity
        assert "timeout" not in t and int(t["activeDeadlineSeconds"]) > 0
        mounts = {m["mountPath"]: m["name"] for m in t["container"]["volumeMounts"]}
        assert mounts["/tmp"] == "seal-tmp" and mounts["/cache"] == "seal-cache"
    values = declared_parameters(wf)
    for name in ("train", "score"):
        t = template(wf, name)
        assert t["container"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        patch = re.sub(r"\{\{workflow\.parameters\.([\w-]+)\}\}", lambda m: values[m.group(1)], t["podSpecPatch"])
        assert json.loads(patch)["tolerations"][0]["key"] == "nvidia.com/gpu"


@pytest.mark.slow
def test_on_the_local_executor_it_writes_the_table_a_local_run_writes(tmp_path, s3_env, wf):
    sets = [f"model.base={TINY}", "model.max_length=256", "task.answer_tokens=8", "sampling.max_new_tokens=24",
            "inner.rank=4", "inner.alpha=8", "inner.epochs=1"]
    folder = str(tmp_path / "local")
    assert main(["eval-knowledge", "--setting", "cpt", "--out", folder, *[x for s in sets for x in ("--set", s)],
                 "--edits-file", EDITS, "--policy", "base", "--limit", "2", "--edits", "1",
                 "--shard-size", "1"]) == 0
    cfg = load_config(None, sets)
    params = {"out": f"{s3_env}/eval", "config": json.dumps(cfg.model_dump(mode="json")), "passages": "",
              "edits-files": EDITS, "policies": "base", "limit": "2", "edits": "1", "shard-size": "1",
              "max-pods": "3"}
    secret = {var: os.environ[var] for var in S3_VARS}
    result = LocalArgo(wf, params, secrets={"seal-s3": secret}, workdir=tmp_path / "pods").run()
    assert result.phase == "Succeeded", result.message
    assert [p.template for p in result.pods] == ["plan", "train", "score", "score", "score", "join"]
    remote, local = open_store(f"{s3_env}/eval"), open_store(folder)
    assert remote.read_json("table.json") == local.read_json("table.json")
