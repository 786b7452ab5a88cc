"""workflows/restem.yaml without a cluster: Argo's schema with unknown fields rejected, every
container command parsed by seal's own CLI parser, every {{reference}} declared, the hardening
rules, the size estimate and `seal plan --dry-run`, and the local executor's own behaviour."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
from argo_local import DEADLINE_MESSAGE, Failure, LocalArgo, Unsupported, WorkflowFailed, evaluate
from conftest import tiny_overrides

from seal.cli import build_parser, main, shard_range
from seal.cluster.workflow import (
    container_commands,
    declared_parameters,
    estimate_size,
    fanout_groups,
    load_workflow,
    reference_errors,
    schema_errors,
)
from seal.config import load_config
from seal.store import open_store

ROOT = Path(__file__).resolve().parents[2]
SQUAD = str(ROOT / "configs/squad-qwen2.5-7b.yaml")
PAPER = [SQUAD, "--set", "contexts_per_round=2067"]


@pytest.fixture
def wf():
    return load_workflow()


def template(doc, name):
    return next(t for t in doc["spec"]["templates"] if t["name"] == name)


# --- schema


def test_workflow_validates_against_argo_models(wf):
    assert schema_errors(wf) == []


@pytest.mark.parametrize("where, typo", [
    (("templates", "adapt"), "retrystrategy"),
    (("templates", "sample", "container"), "envfrom"),
    (("spec",), "podGc"),
])
def test_a_misspelt_field_fails_schema_check(wf, where, typo):
    bad = copy.deepcopy(wf)
    node = bad["spec"] if where == ("spec",) else template(bad, where[1])
    for key in where[2:]:
        node = node[key]
    node[typo] = {"limit": "3"}
    errors = schema_errors(bad)
    assert errors and typo in errors[0] and "not a field" in errors[0]


def test_a_wrong_type_fails_schema_check(wf):
    bad = copy.deepcopy(wf)
    template(bad, "init")["activeDeadlineSeconds"] = ["lots"]
    assert schema_errors(bad)


# --- commands and references


def _fill(arg: str, params: dict[str, str]) -> str:
    samples = {"inputs.parameters.round": "1", "inputs.parameters.shard": "4-7", "workflow.status": "Failed"}
    return re.sub(r"\{\{(.*?)\}\}", lambda m: samples.get(m.group(1)) or params[m.group(1).split(".")[-1]], arg)


def test_every_container_command_parses_with_seals_cli(wf):
    params = {k: v or f"s3://bucket/{k}" for k, v in declared_parameters(wf).items()}
    commands = container_commands(wf)
    assert set(commands) == {"init", "plan", "sample", "adapt", "improve", "finish"}
    parser = build_parser()
    for name, argv in commands.items():
        assert argv[0] == "seal"
        args = parser.parse_args([_fill(a, params) for a in argv[1:]])
        assert args.command == name  # each template runs the stage it is named after
        if name in ("sample", "adapt"):
            assert args.shard == [4, 5, 6, 7] and args.round == 1
        if name != "init":
            assert args.run == "s3://bucket/store/s3://bucket/run-id"


def test_every_reference_resolves(wf):
    assert reference_errors(wf) == []


@pytest.mark.parametrize("edit, needle", [
    (lambda d: template(d, "adapt")["container"]["command"].append("{{inputs.parameters.rnd}}"), "rnd"),
    (lambda d: template(d, "sample")["container"].update(image="{{workflow.parameters.imag}}"), "imag"),
    (lambda d: template(d, "round")["dag"]["tasks"][1].update(
        withParam="{{tasks.plan.outputs.parameters.shards}}"), "no output parameter shards"),
    (lambda d: template(d, "round")["dag"]["tasks"][0]["arguments"]["parameters"].append(
        {"name": "x", "value": "{{tasks.improve.outputs.parameters.adapt-shards}}"}), "not upstream"),
    (lambda d: template(d, "round")["dag"]["tasks"][3]["arguments"]["parameters"].pop(), "does not pass input round"),
    (lambda d: template(d, "round")["dag"]["tasks"][3]["arguments"]["parameters"].append(
        {"name": "shard", "value": "{{item}}"}), "outside a withParam"),
])
def test_a_broken_reference_is_reported(wf, edit, needle):
    bad = copy.deepcopy(wf)
    edit(bad)
    errors = reference_errors(bad)
    assert errors and any(needle in e for e in errors), errors


# --- hardening


def retry_decision(t, code: str, status: str = "Failed", message: str = "") -> bool:
    last = {"lastRetry.exitCode": code, "lastRetry.status": status, "lastRetry.message": message}
    return evaluate(t["retryStrategy"]["expression"], last.__getitem__)


def test_retries_transient_failures_only(wf):
    """The retry expression on the messages the controller really records (argo_local.Failure)."""
    pods = [t for t in wf["spec"]["templates"] if "container" in t]
    for t in pods:
        rs = t["retryStrategy"]
        assert rs["retryPolicy"] == "Always" and isinstance(rs["limit"], str) and int(rs["limit"]) >= 2
        # maxDuration is a deadline from the first attempt's start (operator.go): never on hours-long pods
        assert rs["backoff"]["duration"] and "maxDuration" not in rs["backoff"]
        assert rs["affinity"] == {"nodeAntiAffinity": {}}
        assert retry_decision(t, "75")
        for failure in (Failure.evicted(), Failure.evicted("ephemeral-storage"), Failure.preempted(),
                        Failure.node_shutdown()):
            assert retry_decision(t, str(failure.exit_code if failure.exit_code is not None else -1),
                                  failure.phase, failure.message), failure
        assert retry_decision(t, "75", "Failed", DEADLINE_MESSAGE)  # SIGTERM at the deadline: resumes its shards
        oom = Failure.oom_killed()
        assert not retry_decision(t, str(oom.exit_code), oom.phase, oom.message)
        assert not retry_decision(t, "2", "Failed", "main: Error (exit code 2)")
        assert not retry_decision(t, "65", "Failed", "main: Error (exit code 65)")
        assert not retry_decision(t, "1", "Failed", "main: Error (exit code 1)")
        assert isinstance(t["activeDeadlineSeconds"], str) and int(t["activeDeadlineSeconds"]) > 0
        assert "timeout" not in t  # Argo makes it the pod's activeDeadlineSeconds from the node's start


def test_gpu_pods_quote_limits_and_patch_scheduling(wf):
    values = declared_parameters(wf)
    for name in ("sample", "adapt", "improve"):
        t = template(wf, name)
        assert t["container"]["resources"]["limits"]["nvidia.com/gpu"] == "1"  # a quoted quantity
        assert t["container"]["resources"]["requests"]["ephemeral-storage"]  # room for the base model in /cache
        patch = t["podSpecPatch"]
        for param in (f"{name}-gpus", f"{name}-node-selector", "gpu-tolerations"):
            assert f"{{{{workflow.parameters.{param}}}}}" in patch
        filled = re.sub(r"\{\{workflow\.parameters\.([\w-]+)\}\}", lambda m: values[m.group(1)], patch)  # noqa: B023
        assert json.loads(filled)["tolerations"][0]["key"] == "nvidia.com/gpu"
    spec = wf["spec"]
    assert spec["podGC"]["strategy"] == "OnPodSuccess" and spec["activeDeadlineSeconds"] > 0
    assert spec["onExit"] == "finish" and container_commands(wf)["finish"][1] == "finish"
    # No fixed parallelism: max-pods-per-stage bounds a stage's pods, and it is a parameter.
    assert all("parallelism" not in t for t in spec["templates"]) and "parallelism" not in spec
    for t in spec["templates"]:
        for e in t.get("container", {}).get("envFrom", []):
            assert e == {"secretRef": {"name": "{{workflow.parameters.s3-secret}}"}}


def test_pods_run_as_the_images_user_with_writable_tmp_and_cache_and_no_api_token(wf):
    """Both images run as uid 10001 with HF_HOME and SEAL_CACHE under /cache and HOME=/tmp: every
    container mounts a volume at each, and only Argo's executor gets the account's token."""
    spec = wf["spec"]
    sc = spec["securityContext"]
    assert (sc["runAsUser"], sc["runAsGroup"], sc["fsGroup"]) == (10001, 10001, 10001) and sc["runAsNonRoot"]
    assert sc["fsGroupChangePolicy"] == "OnRootMismatch"
    assert spec["automountServiceAccountToken"] is False
    account = "{{workflow.parameters.service-account}}"
    assert spec["executor"]["serviceAccountName"] == spec["serviceAccountName"] == account
    volumes = {v["name"]: v for v in spec["volumes"]}
    for dockerfile in ("Dockerfile.cpu", "Dockerfile.gpu"):
        text = (ROOT / "docker" / dockerfile).read_text()
        paths = re.findall(r"(?:HOME|SEAL_CACHE|HF_HOME)=(/\S+)", text)
        assert {"/tmp", "/cache/seal", "/cache/huggingface"} <= set(paths), dockerfile
        for t in spec["templates"]:
            if "container" not in t:
                continue
            mounts = {m["mountPath"]: m["name"] for m in t["container"]["volumeMounts"]}
            for path in paths:
                mount = next(m for m in mounts if path == m or path.startswith(m + "/"))
                assert "emptyDir" in volumes[mounts[mount]], (t["name"], path)


# --- size


def test_paper_scale_dry_run_is_well_under_etcds_limit(capsys, wf):
    assert main(["plan", "--dry-run", "--config", *PAPER]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:8]}
    assert rows["sample"][1:4] == ["207", "64", "128"] and rows["adapt"][1:4] == ["646", "64", "128"]
    kb = int(re.search(r"estimated workflow object: ([\d,]+) KB", out).group(1).replace(",", ""))
    assert 100 < kb < 512, out
    # restem.yaml's comment quotes this output: it must not go stale.
    text = (ROOT / "workflows/restem.yaml").read_text()
    quoted = [line[4:] for line in text.splitlines() if line.startswith("#   ") and "  " in line[4:]]
    for line in out.splitlines()[1:8]:
        assert line.rstrip() in quoted, f"restem.yaml's comment lacks: {line}"
    assert out.splitlines()[8].split(" (")[0] in text


def test_estimate_grows_with_pods_and_submit_refuses_an_oversized_workflow(wf, capsys):
    cfg = load_config(SQUAD, ["contexts_per_round=2067", "store=s3://b/runs"])
    capped = estimate_size(cfg, wf, 64)
    uncapped = estimate_size(cfg, wf, None)  # one pod per shard: 207 + 646 pods a round
    assert uncapped["pods"] == 2 * (1 + 207 + 646 + 1) + 2 and capped["pods"] == 2 * (1 + 64 + 64 + 1) + 2
    assert uncapped["total"] > 2 * 2**20 and capped["total"] < 2**19
    code = main(["submit", SQUAD, "--set", "contexts_per_round=2067",
                 "--set", "store=s3://b/runs", "-p", "max-pods-per-stage=100000", "--argo-server", "http://127.0.0.1:9"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "past etcd's ~1 MB" in err[0]


@pytest.mark.parametrize("shards, cap", [(1, 64), (3, 2), (2067, 64), (207, 64), (64, 64), (65, 64), (10, None)])
def test_fanout_groups_cover_every_shard_once(shards, cap):
    groups = fanout_groups(shards, cap)
    assert len(groups) == min(shards, cap or shards)
    covered = [s for g in groups for s in shard_range(g)]
    assert covered == list(range(shards))
    sizes = {len(shard_range(g)) for g in groups}
    assert max(sizes) - min(sizes) <= 1


def test_bad_shard_ranges_are_usage_errors(capsys):
    for bad in ("x", "3-1", "-2"):
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args(["adapt", "--run", "s3://b/r", "--round", "0", "--shard", bad])
        assert e.value.code == 2


def test_dry_run_needs_a_run_or_a_config(capsys, tmp_path):
    assert main(["plan", "--dry-run"]) == 2
    assert main(["plan", "--dry-run", "--run", f"{tmp_path}/none"]) == 2
    assert main(["plan", "--round", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(e.startswith("seal: error:") for e in err)


# --- the stage commands' Argo side, on a local folder (no model needed)


def test_plan_out_dir_finish_and_status_on_a_folder(tmp_path, capsys):
    run = f"{tmp_path}/runs/t"
    assert main(["init", "--run", run, "--config", str(ROOT / "configs/demo-cpu.yaml"),
                 *sum((["--set", o] for o in tiny_overrides(f"{tmp_path}/runs")[2:]), [])]) == 0
    out = tmp_path / "pod" / "tmp" / "seal-plan"
    assert main(["plan", "--run", run, "--round", "0", "--out-dir", str(out), "--max-pods", "2"]) == 0
    assert json.loads((out / "sample.json").read_text()) == ["0", "1"]
    assert json.loads((out / "adapt.json").read_text()) == ["0-1", "2"]  # 3 shards in 2 pods
    assert main(["plan", "--dry-run", "--run", run]) == 0
    capsys.readouterr()
    assert main(["status", run]) == 0
    status = capsys.readouterr().out.splitlines()
    assert status[0].startswith(f"run {run}: running, 2 rounds")
    assert status[3].split() == ["0", "done", "0/2", "0/3", "-", "0/6", "-", "-", "-"]
    assert status[4].split() == ["1", "-", "-", "-", "-", "-", "-", "-", "-"]
    assert main(["finish", "--run", run, "--status", "Failed"]) == 0
    meta = open_store(run).read_json("run.json")
    assert meta["status"] == "failed" and "Failed" in meta["message"]
    assert main(["finish", "--run", run, "--status", "Succeeded"]) == 0
    assert open_store(run).read_json("run.json")["status"] == "succeeded"
    assert main(["finish", "--run", f"{tmp_path}/runs/never", "--status", "Error"]) == 0  # init never ran
    assert main(["finish", "--run", run, "--status", "Done"]) == 2
    assert main(["status", f"{tmp_path}/runs/never"]) == 2


def test_init_takes_an_inline_json_config(tmp_path, capsys):
    cfg = load_config(None, tiny_overrides("s3://elsewhere/runs", "other"))
    run = f"{tmp_path}/runs/t"
    assert main(["init", "--run", run, "--config", json.dumps(cfg.model_dump(mode="json")), "--set", "rounds=3"]) == 0
    meta = open_store(run).read_json("run.json")["config"]
    assert meta["store"] == f"{tmp_path}/runs" and meta["run_id"] == "t" and meta["rounds"] == 3
    assert meta["inner"]["rank"] == 4
    assert main(["init", "--run", run, "--config", "{not json"]) == 2
    assert "not valid JSON" in capsys.readouterr().err


# --- the local executor's own rules


def mini(commands: dict[str, str], wf_doc) -> dict:
    """A small workflow using restem.yaml's retryStrategy: a fan-out and an exit handler, shell pods."""
    retry = template(wf_doc, "adapt")["retryStrategy"]

    def pod(name, script, inputs=()):
        t = {"name": name, "retryStrategy": retry, "container": {"image": "x", "command": ["sh", "-c", script]}}
        if inputs:
            t["inputs"] = {"parameters": [{"name": i} for i in inputs]}
        return t

    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "metadata": {"generateName": "m-"}, "spec": {
        "entrypoint": "main", "onExit": "exit",
        "arguments": {"parameters": [{"name": "dir"}]},
        "templates": [
            {"name": "main", "dag": {"tasks": [
                {"name": "a", "template": "a"},
                {"name": "b", "template": "b", "depends": "a", "withItems": [1, 2, 3],
                 "arguments": {"parameters": [{"name": "i", "value": "{{item}}"}]}},
            ]}},
            pod("a", commands["a"]),
            pod("b", commands["b"], ["i"]),
            pod("exit", "echo {{workflow.status}} > {{workflow.parameters.dir}}/status"),
        ]}}


def test_local_executor_retries_75_once_and_not_2(tmp_path, wf):
    flaky = f"if [ -e {tmp_path}/once ]; then exit 0; else touch {tmp_path}/once; exit 75; fi"
    doc = mini({"a": flaky, "b": "echo {{inputs.parameters.i}} >> {{workflow.parameters.dir}}/items"}, wf)
    res = LocalArgo(doc, {"dir": str(tmp_path)}, workdir=tmp_path / "w").run()
    assert res.phase == "Succeeded"
    assert [(p.template, p.exit_code, p.attempt) for p in res.pods][:2] == [("a", 75, 0), ("a", 0, 1)]
    assert (tmp_path / "items").read_text().split() == ["1", "2", "3"]
    assert (tmp_path / "status").read_text().strip() == "Succeeded"

    doc = mini({"a": "exit 2", "b": "touch {{workflow.parameters.dir}}/ran-b"}, wf)
    res = LocalArgo(doc, {"dir": str(tmp_path)}, workdir=tmp_path / "w2").run()
    assert res.phase == "Failed" and [p.exit_code for p in res.pods] == [2, 0]  # no retry; then the exit handler
    assert not (tmp_path / "ran-b").exists() and (tmp_path / "status").read_text().strip() == "Failed"


@pytest.mark.parametrize("edit, needle", [
    (lambda d: template(d, "sample")["container"].update(workingDir="/app"), "workingDir"),
    (lambda d: template(d, "adapt").update(sidecars=[]), "sidecars"),
    (lambda d: d["spec"].update(hooks={}), "hooks"),
    (lambda d: template(d, "round")["dag"]["tasks"][4].update(continueOn={"failed": True}), "continueOn"),
    (lambda d: template(d, "plan")["outputs"]["parameters"][0]["valueFrom"].update(
        path=None, jsonPath="{.x}"), "jsonPath"),
])
def test_local_executor_refuses_what_it_does_not_implement(wf, edit, needle):
    bad = copy.deepcopy(wf)
    edit(bad)
    with pytest.raises(Unsupported, match=needle):
        LocalArgo(bad, {"store": "s3://b/r", "run-id": "t"})


def test_local_executor_fails_loudly_on_an_unknown_reference_or_missing_secret(tmp_path, wf):
    bad = copy.deepcopy(wf)
    template(bad, "init")["container"]["command"].append("{{workflow.parameters.nope}}")
    with pytest.raises(Unsupported, match="nope"):
        LocalArgo(bad, {"store": str(tmp_path), "run-id": "t"}, workdir=tmp_path / "w").run()
    res = LocalArgo(wf, {"store": str(tmp_path), "run-id": "t"}, secrets={}, workdir=tmp_path / "w2")
    with pytest.raises(WorkflowFailed, match="Secret seal-s3 does not exist"):
        res.execute("init", {})


def test_int_or_string_and_quantity_fields_are_quoted(wf):
    """Argo's own JSON schema rejects bare integers where it expects int-or-string or a quantity."""
    for t in wf["spec"]["templates"]:
        if "container" not in t:
            continue
        resources = t["container"]["resources"]
        for kind in ("requests", "limits"):
            for name, value in resources.get(kind, {}).items():
                assert isinstance(value, str), f"{t['name']} {kind}.{name}: {value!r} must be quoted"
        rs = t["retryStrategy"]
        assert all(isinstance(v, str) for v in (rs["limit"], rs["backoff"]["factor"], t["activeDeadlineSeconds"]))
