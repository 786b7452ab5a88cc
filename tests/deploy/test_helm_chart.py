"""The Helm chart, without a cluster: rendered and linted by Helm's own Go SDK (helm-python-sdk),
core kinds validated by kubernetes-validate in strict mode, Argo kinds by Hera's models with
unknown fields caught by a round trip, and the WorkflowTemplate compared with workflows/restem.yaml.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import helm_python as helm  # in the `test` extra: missing, the suite fails rather than skips
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "seal"
RESTEM = ROOT / "workflows" / "restem.yaml"
KUBE_VERSION = "1.30.0"
RELEASE, NAMESPACE = "ml", "seal-ns"

# Value sets the README documents; each must render, lint strict and validate.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "external-s3-existing-secret": {
        "store": {"bucket": "team-llm", "prefix": "seal/runs", "endpoint": "https://minio.storage:9000",
                  "region": "eu-west-1", "credentials": {"existingSecret": "team-llm-s3"}},
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/seal"}},
    },
    "chart-created-secret": {
        "store": {"credentials": {"existingSecret": "", "accessKeyId": "AKIATESTKEY",
                                  "secretAccessKey": "sup3r-s3cret-value"}},
    },
    "gpu-types-and-tolerations": {
        "image": {"digest": "sha256:" + "ab" * 32},
        "gpu": {"resourceName": "amd.com/gpu", "runtimeClassName": "rocm",
                "tolerations": [{"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                                {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoExecute",
                                 "tolerationSeconds": 600}]},
        "priorityClassName": "ml-batch",
        "parallelism": 24,
        "stages": {"sample": {"gpus": 1, "nodeSelector": {"gpu.product": "MI300X"}},
                   "adapt": {"gpus": 1, "nodeSelector": {"gpu.product": "MI250"}},
                   "improve": {"gpus": 1, "nodeSelector": {"gpu.product": "MI300X"},
                               "resources": {"requests": {"cpu": "32", "memory": "512Gi"},
                                             "limits": {"memory": "1Ti"}}}},
        "imagePullSecrets": [{"name": "regcred"}],
        "modelCache": {"enabled": True, "storageClassName": "fast-rwx", "size": "1Ti"},
    },
    "metrics-on": {
        "metrics": {"pushgateway": "http://pushgateway.monitoring:9091",
                    "podMonitor": {"enabled": True, "labels": {"release": "kube-prometheus"}},
                    "serviceMonitor": {"enabled": True, "namespace": "monitoring"},
                    "grafanaDashboard": {"enabled": True}},
    },
    "metrics-off": {"metrics": {"port": 0, "argoStageMetrics": False}, "helmTest": {"enabled": False}},
    "existing-cache-claim-and-account": {
        "modelCache": {"enabled": True, "existingClaim": "hf-cache"},
        "serviceAccount": {"create": False, "name": "ml-runner"}, "rbac": {"create": False},
        "runConfig": {"preset": "demo-cpu", "overrides": {"rounds": 3, "inner": {"fits": 2}}},
        "workflowParameters": {"max-pods-per-stage": "16"},
    },
    "kind-e2e": yaml.safe_load((ROOT / "tests" / "e2e" / "values-kind.yaml").read_text()),
}

# Parameters whose defaults the chart sets from its values (the rest keep restem.yaml's).
CHART_PARAMETERS = {"image", "store", "config", "config-map", "s3-secret", "service-account", "gpu-tolerations",
                    "rounds", "sample-shard-size", "adapt-shard-size",
                    *(f"{s}-{p}" for s in ("sample", "adapt", "improve") for p in ("gpus", "node-selector"))}
CHART_ENV = {"AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "HOME", "HF_HOME", "SEAL_CACHE",
             "SEAL_METRICS_PORT", "SEAL_PUSHGATEWAY"}
CHART_VOLUMES = {"seal-tmp", "seal-cache"}


def _restem() -> dict[str, Any]:
    if not RESTEM.exists():
        pytest.fail("workflows/restem.yaml is missing: the chart installs it as its WorkflowTemplate")
    return yaml.safe_load(RESTEM.read_text())


@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(str(CHART)) as c:
        yield c


def render(chart, values: dict[str, Any]) -> dict[str, str]:
    return chart.render(values=copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE)


def manifests(rendered: dict[str, str]) -> list[dict[str, Any]]:
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc["__path"] = path
                docs.append(doc)
    return docs


@pytest.fixture(scope="module")
def rendered(chart) -> dict[str, list[dict[str, Any]]]:
    return {name: manifests(render(chart, values)) for name, values in VALUE_SETS.items()}


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def workflow_template(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (wt,) = by_kind(docs, "WorkflowTemplate")
    return wt


# --- render, lint, validate


@pytest.mark.parametrize("name", VALUE_SETS)
def test_lint_strict(name):
    report = helm.lint(str(CHART), copy.deepcopy(VALUE_SETS[name]), strict=True, namespace=NAMESPACE,
                       kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


@pytest.mark.parametrize("name", VALUE_SETS)
def test_core_kinds_validate_strictly(rendered, name):
    core = [d for d in rendered[name] if "." not in d["apiVersion"].split("/")[0]
            or d["apiVersion"].startswith("rbac.authorization.k8s.io/")]
    assert {d["kind"] for d in core} >= {"ConfigMap"}
    for doc in core:
        body = {k: v for k, v in doc.items() if k != "__path"}
        try:
            kubernetes_validate.validate(body, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{doc['__path']}: {doc['kind']} {doc['metadata']['name']}: {e.message} at "
                        f"{'/'.join(str(p) for p in e.path)}")


def _same(a: Any, b: Any, path: str = "") -> list[str]:
    """Differences between two JSON-like values; int 10 and float 10.0 count as the same."""
    if isinstance(a, bool) or isinstance(b, bool):
        return [] if a is b else [f"{path}: {a!r} != {b!r}"]
    if isinstance(a, int | float) and isinstance(b, int | float):
        return [] if a == b else [f"{path}: {a!r} != {b!r}"]
    if type(a) is not type(b):
        return [f"{path}: {type(a).__name__} {a!r:.60} != {type(b).__name__} {b!r:.60}"]
    if isinstance(a, dict):
        out = [f"{path}/{k}: {'dropped (unknown field?)' if k in a else 'added'}" for k in set(a) ^ set(b)]
        for k in set(a) & set(b):
            out += _same(a[k], b[k], f"{path}/{k}")
        return out
    if isinstance(a, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _same(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def hera_round_trip(doc: dict[str, Any]) -> list[str]:
    """Validate with Hera's model; since it silently drops unknown fields, compare a round trip."""
    from hera.workflows import models

    body = {k: v for k, v in doc.items() if k != "__path"}
    model = getattr(models, doc["kind"]).model_validate(body)
    back = json.loads(model.model_dump_json(by_alias=True, exclude_none=True))
    return _same(body, back)


@pytest.mark.parametrize("name", VALUE_SETS)
def test_argo_kinds_validate_with_hera_and_no_unknown_fields(rendered, name):
    argo = [d for d in rendered[name] if d["apiVersion"].startswith("argoproj.io/")]
    assert [d["kind"] for d in argo] == ["WorkflowTemplate"]
    for doc in argo:
        assert hera_round_trip(doc) == []


def test_round_trip_catches_a_typo(rendered):
    wt = copy.deepcopy(workflow_template(rendered["defaults"]))
    wt["spec"]["templates"][-1]["container"]["imagePulPolicy"] = "Always"
    assert any("imagePulPolicy: dropped" in d for d in hera_round_trip(wt))


def test_quantities_and_counts_are_strings(rendered):
    """Argo's schema rejects integers in quantity and int-or-string fields."""
    spec = workflow_template(rendered["gpu-types-and-tolerations"])["spec"]
    for t in spec["templates"]:
        for section in t.get("container", {}).get("resources", {}).values():
            assert all(isinstance(v, str) for v in section.values()), (t["name"], section)
    assert all(isinstance(p.get("value", ""), str) for p in spec["arguments"]["parameters"])


def test_monitoring_kinds(rendered):
    docs = rendered["metrics-on"]
    (pm,) = by_kind(docs, "PodMonitor")
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert pm["metadata"]["labels"]["release"] == "kube-prometheus"
    assert pm["spec"]["podMetricsEndpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]
    wt = workflow_template(docs)
    assert pm["spec"]["selector"]["matchLabels"].items() <= wt["spec"]["podMetadata"]["labels"].items()
    (sm,) = by_kind(docs, "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["honorLabels"] is True
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["monitoring"]}
    dashboards = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    dashboard = json.loads(dashboards[0]["data"]["seal.json"])
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    from seal import metrics

    exported = {m._name for m in metrics._define(metrics.CollectorRegistry()).__dict__.values()}
    for name in set(re.findall(r"\bseal_[a-z_]+", exprs)) - {"seal_argo_stage_runs_total"}:
        assert re.sub(r"_(total|bucket|sum|count)$", "", name) in exported, name
    for c in (t["container"] for t in wt["spec"]["templates"] if "container" in t):
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["SEAL_PUSHGATEWAY"] == "http://pushgateway.monitoring:9091"
        assert env["SEAL_METRICS_PORT"] == "9108"
        assert {"name": "metrics", "containerPort": 9108, "protocol": "TCP"} in c["ports"]
    off = rendered["metrics-off"]
    assert not by_kind(off, "PodMonitor") and not by_kind(off, "ServiceMonitor")
    for t in workflow_template(off)["spec"]["templates"]:
        assert "metrics" not in t and "ports" not in t.get("container", {})


# --- one source of truth: the WorkflowTemplate is workflows/restem.yaml


def test_chart_links_restem_yaml():
    link = CHART / "files" / "restem.yaml"
    assert link.is_symlink() and link.resolve() == RESTEM.resolve(), "helm/seal/files/restem.yaml must link it"
    assert (CHART / "files" / "configs").resolve() == (ROOT / "configs").resolve()


def strip_chart_managed(spec: dict[str, Any], gpu_resource: str = "nvidia.com/gpu",
                        overridden: tuple[str, ...] = ()) -> dict[str, Any]:
    """The spec less everything the chart templates (see workflowtemplate-restem.yaml's header)."""
    spec = copy.deepcopy(spec)
    for key in ("securityContext", "podMetadata", "workflowMetadata", "podPriorityClassName", "imagePullSecrets",
                "parallelism"):
        spec.pop(key, None)
    for p in spec["arguments"]["parameters"]:
        if p["name"] in CHART_PARAMETERS or p["name"] in overridden:  # overridden: by workflowParameters
            p.pop("value", None)
    spec["volumes"] = [v for v in spec.get("volumes", []) if v["name"] not in CHART_VOLUMES]
    if not spec["volumes"]:
        del spec["volumes"]
    for t in spec["templates"]:
        t.pop("metrics", None)
        if "podSpecPatch" in t:
            patch = t["podSpecPatch"].strip().replace(gpu_resource, "nvidia.com/gpu")
            t["podSpecPatch"] = re.sub(r', "runtimeClassName": "[^"]*"}$', "}", patch)
        c = t.get("container")
        if not c:
            continue
        for key in ("securityContext", "imagePullPolicy", "resources", "ports"):
            c.pop(key, None)
        c["env"] = [e for e in c.get("env", []) if e["name"] not in CHART_ENV]
        c["volumeMounts"] = [m for m in c.get("volumeMounts", []) if m["name"] not in CHART_VOLUMES]
        for key in ("env", "volumeMounts"):
            if not c[key]:
                del c[key]
    return spec


@pytest.mark.parametrize("name", ["defaults", "gpu-types-and-tolerations", "metrics-off", "kind-e2e"])
def test_workflow_template_is_restem_yaml(rendered, name):
    restem = _restem()
    wt = workflow_template(rendered[name])
    resource = VALUE_SETS[name].get("gpu", {}).get("resourceName", "nvidia.com/gpu")
    overridden = tuple(VALUE_SETS[name].get("workflowParameters", {}))
    diffs = _same(strip_chart_managed(restem["spec"], overridden=overridden),
                  strip_chart_managed(wt["spec"], resource, overridden))
    assert diffs == [], "the chart's WorkflowTemplate differs from workflows/restem.yaml:\n" + "\n".join(diffs)
    labels = wt["spec"]["workflowMetadata"]["labels"]
    assert restem["metadata"].get("labels", {}).items() <= labels.items()


def test_argo_expressions_pass_through_helm_untouched(rendered):
    source = RESTEM.read_text()
    # Every Argo expression of restem.yaml (outside comments) survives rendering verbatim.
    code = "\n".join(line.split(" #")[0] for line in source.splitlines() if not line.lstrip().startswith("#"))
    expressions = set(re.findall(r"\{\{[^{}]+\}\}", code))
    assert expressions
    out = yaml.safe_dump(workflow_template(rendered["defaults"]), width=10_000)
    missing = [e for e in expressions if e not in out]
    assert not missing, missing


def test_parameter_defaults_come_from_values(rendered):
    def params(name):
        return {p["name"]: p.get("value") for p in workflow_template(rendered[name])["spec"]["arguments"]["parameters"]}

    d = params("defaults")
    assert d["image"] == "ghcr.io/seal-project/seal:0.1.0"
    assert d["store"] == "s3://seal-artifacts/runs"
    assert d["s3-secret"] == "seal-s3" and d["service-account"] == f"{RELEASE}-seal"
    assert d["config"] == "/etc/seal/run.yaml" and d["config-map"] == f"{RELEASE}-seal-config"
    g = params("gpu-types-and-tolerations")
    assert g["image"] == "ghcr.io/seal-project/seal@sha256:" + "ab" * 32
    assert (g["sample-gpus"], g["adapt-gpus"], g["improve-gpus"]) == ("1", "1", "1")
    assert json.loads(g["improve-node-selector"]) == {"gpu.product": "MI300X"}
    assert json.loads(g["gpu-tolerations"])[1]["tolerationSeconds"] == 600
    e = params("existing-cache-claim-and-account")
    assert e["rounds"] == "3" and e["max-pods-per-stage"] == "16" and e["service-account"] == "ml-runner"
    k = params("kind-e2e")
    assert (k["rounds"], k["sample-shard-size"], k["adapt-shard-size"]) == ("2", "2", "2")
    assert k["store"] == "s3://seal-e2e/runs"


def test_gpu_scheduling(rendered):
    spec = workflow_template(rendered["gpu-types-and-tolerations"])["spec"]
    t = {t["name"]: t for t in spec["templates"]}
    assert t["improve"]["container"]["resources"]["limits"] == {"memory": "1Ti", "amd.com/gpu": "1"}
    assert spec["parallelism"] == 24 and "parallelism" not in workflow_template(rendered["defaults"])["spec"]
    assert "amd.com/gpu" in t["sample"]["podSpecPatch"] and "nvidia.com" not in t["sample"]["podSpecPatch"]
    assert t["sample"]["podSpecPatch"].endswith(', "runtimeClassName": "rocm"}')
    assert spec["podPriorityClassName"] == "ml-batch"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    cpu = workflow_template(rendered["kind-e2e"])["spec"]["templates"]
    for tmpl in cpu:
        limits = tmpl.get("container", {}).get("resources", {}).get("limits", {})
        assert not any("gpu" in k for k in limits), tmpl["name"]


def test_pod_security_and_volumes(rendered):
    for name, docs in rendered.items():
        spec = workflow_template(docs)["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        volumes = {v["name"]: v for v in spec["volumes"]}
        for tmpl in spec["templates"]:
            c = tmpl.get("container")
            if not c:
                continue
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert {"name": "seal-tmp", "mountPath": "/tmp"} in c["volumeMounts"]
            assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
            assert "latest" not in spec["arguments"]["parameters"][0]["value"]
        claim = VALUE_SETS[name].get("modelCache", {})
        if claim.get("enabled"):
            assert volumes["seal-cache"]["persistentVolumeClaim"]["claimName"] == (
                claim.get("existingClaim") or f"{RELEASE}-seal-model-cache")
        else:
            assert volumes["seal-cache"] == {"name": "seal-cache", "emptyDir": {}}
    pvcs = by_kind(rendered["gpu-types-and-tolerations"], "PersistentVolumeClaim")
    assert pvcs[0]["spec"]["storageClassName"] == "fast-rwx"
    assert not by_kind(rendered["existing-cache-claim-and-account"], "PersistentVolumeClaim")


def test_least_rbac(rendered):
    (role,) = [r for r in by_kind(rendered["defaults"], "Role") if r["metadata"]["name"].endswith("-executor")]
    assert role["rules"] == [{"apiGroups": ["argoproj.io"], "resources": ["workflowtaskresults"],
                              "verbs": ["create", "patch"]}]
    (test_role,) = [r for r in by_kind(rendered["defaults"], "Role") if r["metadata"]["name"].endswith("-test")]
    assert test_role["rules"][0]["verbs"] == ["get"] and test_role["rules"][0]["resourceNames"] == [f"{RELEASE}-seal"]
    none = rendered["existing-cache-claim-and-account"]
    assert not by_kind(none, "ServiceAccount") or all(s["metadata"]["name"].endswith("-test")
                                                      for s in by_kind(none, "ServiceAccount"))
    assert all(r["metadata"]["name"].endswith("-test") for r in by_kind(none, "Role"))


def s3_secrets(docs):
    return [s for s in by_kind(docs, "Secret") if s.get("type") != "kubernetes.io/service-account-token"]


def test_executor_token_secret_and_no_token_in_main_containers(rendered):
    """Argo mounts <account>.service-account-token into its executor's containers only
    (workflowpod.go, setupServiceAccount); Kubernetes >= 1.24 makes no such Secret by itself."""
    (token,) = [s for s in by_kind(rendered["defaults"], "Secret") if s not in s3_secrets(rendered["defaults"])]
    assert token["metadata"]["name"] == f"{RELEASE}-seal.service-account-token"
    assert token["metadata"]["annotations"] == {"kubernetes.io/service-account.name": f"{RELEASE}-seal"}
    spec = workflow_template(rendered["defaults"])["spec"]
    assert spec["automountServiceAccountToken"] is False
    params = {p["name"]: p.get("value") for p in spec["arguments"]["parameters"]}
    assert params["service-account"] == f"{RELEASE}-seal"
    assert spec["executor"]["serviceAccountName"] == "{{workflow.parameters.service-account}}"
    assert spec["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"
    assert not by_kind(rendered["existing-cache-claim-and-account"], "Secret")  # an existing account brings its own


def test_s3_credentials_secret(chart, rendered):
    assert not s3_secrets(rendered["defaults"])
    assert not s3_secrets(rendered["external-s3-existing-secret"])
    (secret,) = s3_secrets(rendered["chart-created-secret"])
    assert set(secret["data"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    out = render(chart, VALUE_SETS["chart-created-secret"])
    notes = out[next(p for p in out if p.endswith("NOTES.txt"))]
    assert "sup3r-s3cret-value" not in notes and "AKIATESTKEY" not in notes
    wt = workflow_template(rendered["external-s3-existing-secret"])
    params = {p["name"]: p.get("value") for p in wt["spec"]["arguments"]["parameters"]}
    assert params["s3-secret"] == "team-llm-s3" and params["store"] == "s3://team-llm/seal/runs"
    env = {e["name"]: e["value"] for e in wt["spec"]["templates"][-1]["container"]["env"]}
    assert env["AWS_ENDPOINT_URL"] == "https://minio.storage:9000" and env["AWS_REGION"] == "eu-west-1"


@pytest.mark.parametrize("name", VALUE_SETS)
def test_run_config_is_a_valid_seal_config(rendered, name):
    from seal.config import from_dict

    (cm,) = [c for c in by_kind(rendered[name], "ConfigMap") if c["metadata"]["name"].endswith("-config")]
    cfg = from_dict(yaml.safe_load(cm["data"]["run.yaml"]))
    overrides = VALUE_SETS[name].get("runConfig", {}).get("overrides", {})
    if "rounds" in overrides:
        assert cfg.rounds == overrides["rounds"]


def test_notes_print_the_exact_submit_command(chart):
    out = render(chart, {})
    notes = out[next(p for p in out if p.endswith("NOTES.txt"))]
    assert f"argo submit -n {NAMESPACE} --from workflowtemplate/{RELEASE}-seal -p run-id=my-run-1 --watch" in notes
    assert f"helm test {RELEASE} -n {NAMESPACE}" in notes


def test_helm_test_hook(rendered):
    pods = by_kind(rendered["defaults"], "Pod")
    assert len(pods) == 1 and pods[0]["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert not by_kind(rendered["metrics-off"], "Pod")


# --- every values.yaml key is documented and typed


def test_every_values_key_has_a_comment_and_a_schema_entry():
    lines = (CHART / "values.yaml").read_text().splitlines()
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load("\n".join(lines))
    # Keys inside these values are Kubernetes object fields (documented by Kubernetes), not chart keys.
    data = re.compile(r"^(stages\.\w+\.resources|podSecurityContext|containerSecurityContext|gpu\.tolerations"
                      r"|metrics\.\w+\.(labels|selector))\.")
    undocumented, stack = [], []  # stack: (indent, key) of the keys enclosing the current line
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][\w.-]*):", line)
        if not m or line.lstrip().startswith("#"):
            continue
        indent = len(m.group(1))
        stack = [(n, k) for n, k in stack if n < indent] + [(indent, m.group(2))]
        path = ".".join(k for _, k in stack)
        if data.match(path):
            continue
        above = lines[i - 1].strip() if i else ""
        if not (above.startswith("#") or " # " in line):
            undocumented.append(f"values.yaml:{i + 1}: {path}")
    assert not undocumented, "keys without a comment:\n" + "\n".join(undocumented)

    def walk(node: Any, sch: dict[str, Any], path: str) -> None:
        if "$ref" in sch:
            sch = schema["$defs"][sch["$ref"].rsplit("/", 1)[-1]]
        if not isinstance(node, dict) or "properties" not in sch:
            return
        assert sch.get("additionalProperties") is False, f"{path or '(root)'} must reject unknown keys"
        for key, child in node.items():
            assert key in sch["properties"], f"{path}.{key} is missing from values.schema.json"
            walk(child, sch["properties"][key], f"{path}.{key}")

    walk(values, schema, "")


# --- bad values fail with a readable message

NEGATIVE = [
    ({"image": {"tag": "latest"}}, "/image/tag"),
    ({"image": {"tag": "", "digest": ""}}, "/image"),
    ({"image": {"digest": "sha256:abc"}}, "/image/digest"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"bogus": 1}, "additional properties 'bogus' not allowed"),
    ({"stages": {"sample": {"gpu": 1}}}, "additional properties 'gpu' not allowed"),
    ({"stages": {"sample": {"gpus": "2"}}}, "/stages/sample/gpus"),
    ({"stages": {"adapt": {"gpus": -1}}}, "/stages/adapt/gpus"),
    ({"stages": {"adapt": {"resources": {"limits": {"memory": "lots"}}}}}, "/stages/adapt/resources/limits/memory"),
    ({"stages": {"cpu": {"resources": {"limits": {"nvidia.com/gpu": "1"}}}}},
     "additional properties 'nvidia.com/gpu' not allowed"),
    ({"podSecurityContext": {"runAsNonRoot": False}}, "/podSecurityContext/runAsNonRoot"),
    ({"containerSecurityContext": {"allowPrivilegeEscalation": True}},
     "/containerSecurityContext/allowPrivilegeEscalation"),
    ({"store": {"credentials": {"existingSecret": ""}}}, "/store/credentials/accessKeyId"),
    ({"store": {"bucket": "Bad_Bucket"}}, "/store/bucket"),
    ({"store": {"endpoint": "minio:9000"}}, "/store/endpoint"),
    ({"gpu": {"tolerations": [{"key": "x", "operator": "Sometimes"}]}}, "/gpu/tolerations/0/operator"),
    ({"gpu": {"pendingTimeout": "2h"}}, "additional properties 'pendingTimeout' not allowed"),
    ({"stages": {"sample": {"gpus": 2}}}, "/stages/sample/gpus"),  # one GPU per pod: nothing uses a second
    ({"parallelism": -1}, "/parallelism"),
    ({"metrics": {"port": "9108"}}, "/metrics/port"),
    ({"metrics": {"podMonitor": {"enabled": "yes"}}}, "/metrics/podMonitor/enabled"),
    ({"modelCache": {"accessModes": ["ReadWriteSometimes"]}}, "/modelCache/accessModes/0"),
    # Checked by the templates (they need the files or the workflow):
    ({"runConfig": {"preset": "no-such-config"}}, "presets: "),
    ({"workflowParameters": {"no-such-parameter": "1"}}, 'parameter "no-such-parameter"'),
    ({"metrics": {"port": 0, "podMonitor": {"enabled": True}}}, "metrics.podMonitor.enabled needs metrics.port > 0"),
]


@pytest.mark.parametrize(("values", "message"), NEGATIVE, ids=[m for _, m in NEGATIVE])
def test_bad_values_are_rejected_readably(chart, values, message):
    with pytest.raises(helm.HelmError) as err:
        render(chart, values)
    text = str(err.value)
    assert message in text, text
    assert len(text) < 2000, text


# --- the `helm test` script, against a real S3 server and a stand-in Kubernetes API


@pytest.fixture
def fake_kube_api(tmp_path):
    """An HTTP server answering GET .../workflowtemplates/<name> like the API server; yields
    (url, service-account dir, set of existing template names)."""
    import http.server
    import threading

    existing: set[str] = set()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            name = self.path.rsplit("/", 1)[-1]
            ok = self.headers.get("Authorization") == "Bearer test-token" and name in existing
            body = json.dumps({"kind": "WorkflowTemplate", "spec": {"entrypoint": "main"}}).encode()
            self.send_response(200 if ok else 404)
            self.end_headers()
            self.wfile.write(body if ok else b"{}")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("test-token\n")
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", sa, existing
    finally:
        server.shutdown()


def test_helm_test_script_checks_store_and_template(s3_env, fake_kube_api, tmp_path):
    import os
    import subprocess
    import sys

    api, sa, existing = fake_kube_api
    env = {**os.environ, "SEAL_STORE": s3_env, "SEAL_KUBE_API": api, "SEAL_SA_DIR": str(sa),
           "SEAL_NAMESPACE": NAMESPACE, "SEAL_WORKFLOW_TEMPLATE": f"{RELEASE}-seal"}
    script = [sys.executable, str(CHART / "files" / "helm-test.py")]

    def run(**extra):
        return subprocess.run(script, env={**env, **extra}, capture_output=True, text=True, timeout=60)

    missing = run()
    assert missing.returncode != 0 and "store s3://" in missing.stdout
    assert "HTTP 404 (404: not installed" in missing.stderr
    existing.add(f"{RELEASE}-seal")
    ok = run()
    assert ok.returncode == 0, ok.stderr
    assert "is reachable and writable" in ok.stdout and "exists (entrypoint main)" in ok.stdout
    bad_bucket = run(SEAL_STORE="s3://no-such-bucket-seal/runs")
    assert bad_bucket.returncode != 0 and "bucket not found" in bad_bucket.stderr
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    wrong = run(AWS_SECRET_ACCESS_KEY="wrong-secret-key")
    assert wrong.returncode != 0 and "access denied" in wrong.stderr
    assert secret not in wrong.stdout + wrong.stderr and "wrong-secret-key" not in wrong.stdout + wrong.stderr


def test_packaged_chart_is_self_contained(tmp_path):
    """`helm package` resolves the links: the archive a registry serves carries restem.yaml itself."""
    archive = helm.package(str(CHART), destination=str(tmp_path))
    with helm.Chart.load(archive) as packaged:
        names = {f["name"] for f in packaged.files}
        assert {"files/restem.yaml", "files/configs/demo-cpu.yaml", "files/grafana-dashboard.json"} <= names
        restem = next(f for f in packaged.files if f["name"] == "files/restem.yaml")
        assert yaml.safe_load(restem["data"]) == _restem()
        wt = workflow_template(manifests(render(packaged, {})))
        assert wt["spec"]["entrypoint"] == _restem()["spec"]["entrypoint"]


def test_versions_agree():
    """The chart's appVersion, its default image tag and seal's version move together."""
    import tomllib

    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert chart["appVersion"] == values["image"]["tag"] == version
