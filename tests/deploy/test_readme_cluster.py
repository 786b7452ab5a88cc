"""README's "Run on a cluster with Argo", followed command by command without a cluster: the
objects its `kubectl` commands create validate strictly and are the ones workflows/restem.yaml
names (service account, its executor token, the executor's Role, the S3 Secret, the model cache
claim); both submit commands pass an image and a config the image holds; and the workflow, with
exactly the README's `argo submit` parameters and those objects, runs on the local executor."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from argo_local import Attempt, LocalArgo, PodRequest

from seal.cli import build_parser, main
from seal.cluster.workflow import declared_parameters, load_workflow

ROOT = Path(__file__).resolve().parents[2]
KUBE_VERSION = "1.30.0"


def readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Run on a cluster with Argo"):text.index("## Install with Helm")]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines()
            if shlex.split(line, comments=True)]


def without_namespace(argv: list[str]) -> list[str]:
    return [a for i, a in enumerate(argv) if a != "-n" and (i == 0 or argv[i - 1] != "-n")]


def find(commands: list[list[str]], *prefix: str) -> list[list[str]]:
    return [c for c in commands if without_namespace(c)[:len(prefix)] == list(prefix)]


def options(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


@pytest.fixture(scope="module")
def cluster():
    """What the README's kubectl commands create, by kind and name."""
    commands = readme_commands()
    objects: dict[tuple[str, str], dict] = {}
    for cmd in find(commands, "kubectl", "apply"):
        assert options(cmd, "-n") == ["argo"], cmd
        for doc in yaml.safe_load_all((ROOT / options(cmd, "-f")[0]).read_text()):
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
            objects[(doc["kind"], doc["metadata"]["name"])] = doc
    for cmd in find(commands, "kubectl", "create", "secret", "generic"):
        assert options(cmd, "-n") == ["argo"], cmd
        name = without_namespace(cmd)[4]
        keys = [a.split("=", 2)[1] for a in cmd if a.startswith("--from-literal=")]
        objects[("Secret", name)] = {"kind": "Secret", "metadata": {"name": name}, "data": dict.fromkeys(keys, "x")}
    return objects


def test_the_readme_creates_every_object_the_workflow_names(cluster):
    wf = load_workflow()
    defaults = declared_parameters(wf)
    account = defaults["service-account"]
    assert ("ServiceAccount", account) in cluster
    assert wf["spec"]["executor"]["serviceAccountName"] == "{{workflow.parameters.service-account}}"
    # Argo mounts <account>.service-account-token into the executor's containers (workflowpod.go)
    token = cluster[("Secret", f"{account}.service-account-token")]
    assert token["type"] == "kubernetes.io/service-account-token"
    assert token["metadata"]["annotations"]["kubernetes.io/service-account.name"] == account
    bindings = [o for (kind, _), o in cluster.items() if kind == "RoleBinding"
                if {"kind": "ServiceAccount", "name": account} in o["subjects"]]
    rules = [r for b in bindings for r in cluster[("Role", b["roleRef"]["name"])]["rules"]]
    assert any("workflowtaskresults" in r["resources"] and {"create", "patch"} <= set(r["verbs"]) for r in rules)
    s3 = cluster[("Secret", defaults["s3-secret"])]
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(s3["data"])


def test_both_submit_commands_pass_an_image_and_a_config_the_image_holds(cluster):
    commands = readme_commands()
    (argo,) = find(commands, "argo", "submit")
    assert argo[2:4] == ["-n", "argo"] and "workflows/restem.yaml" in argo
    params = dict(p.split("=", 1) for p in options(argo, "-p"))
    assert params["image"] != declared_parameters(load_workflow())["image"]  # the user's own build
    missing = [k for k, v in declared_parameters(load_workflow()).items() if v is None and k not in params]
    assert not missing
    config = params["config"]
    assert config.startswith("/app/configs/") and (ROOT / "configs" / Path(config).name).is_file()
    for dockerfile in ("Dockerfile.cpu", "Dockerfile.gpu"):  # both images hold configs/ at /app/configs
        assert "COPY configs /app/configs" in (ROOT / "docker" / dockerfile).read_text()
    (seal,) = find(commands, "seal", "submit")
    args = build_parser().parse_args(seal[1:])
    assert any(p.startswith("image=") for p in args.parameters)
    assert ("PersistentVolumeClaim", args.model_cache_claim) in cluster


def test_the_readme_seal_submit_mounts_its_claim(capsys):
    (seal,) = find(readme_commands(), "seal", "submit")
    assert main([*seal[1:], "--print"]) == 0
    wf = yaml.safe_load(capsys.readouterr().out)
    (cache,) = [v for v in wf["spec"]["volumes"] if v["name"] == "seal-cache"]
    claim = build_parser().parse_args(seal[1:]).model_cache_claim
    assert cache["persistentVolumeClaim"] == {"claimName": claim}


def test_the_readme_argo_submit_runs_with_those_objects(cluster, tmp_path):
    """The README's parameters, Secrets and ConfigMaps (none: the config comes from the image) on
    the local executor, every pod simulated as succeeding: each reference resolves, each Secret
    the pods read exists."""
    (argo,) = find(readme_commands(), "argo", "submit")
    params = dict(p.split("=", 1) for p in options(argo, "-p"))
    secrets = {name: dict(o["data"]) for (kind, name), o in cluster.items()
               if kind == "Secret" and o.get("type") != "kubernetes.io/service-account-token"}

    def decide(req: PodRequest) -> Attempt:
        files = {"/tmp/seal-plan/sample.json": '["0"]', "/tmp/seal-plan/adapt.json": '["0","1"]'}
        return Attempt(run_s=60.0, files=files if req.template == "plan" else {})

    res = LocalArgo(load_workflow(), params, secrets=secrets, workdir=tmp_path, cluster=decide).run()
    assert res.phase == "Succeeded", res.message
    init = next(p for p in res.pods if p.template == "init")
    assert init.command[init.command.index("--config") + 1] == params["config"]
    assert init.command[init.command.index("--run") + 1] == f"{params['store']}/{params['run-id']}"
    assert json.dumps([p.template for p in res.pods]).count("adapt") == 2 * int(declared_parameters(
        load_workflow())["rounds"])
