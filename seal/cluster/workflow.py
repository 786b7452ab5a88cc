"""workflows/restem.yaml as data: loading it, checking it, its parameters for a run config, and
`seal plan --dry-run`'s count of pods and estimate of the workflow object's size.

Argo keeps a whole workflow, spec and status, in one Kubernetes object, and etcd caps objects near
1 MB. The spec is fixed (restem.yaml plus its parameters); the status grows by one node record per
pod, task group and retry. The estimate below builds those records the way Argo writes them and
measures their JSON, so the shard sizes can be chosen before anything is submitted.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from seal.config import RunConfig, read_yaml
from seal.errors import ConfigError

ETCD_LIMIT = 1024 * 1024  # Argo's default MAX_WORKFLOW_SIZE, etcd's request limit (1.5 MiB) aside
WORKFLOW_NAME = "seal-restem-x7k2p"  # generateName plus Argo's 5 random characters


def default_workflow_path() -> Path:
    """workflows/restem.yaml of the checkout this package runs from."""
    return Path(__file__).resolve().parents[2] / "workflows" / "restem.yaml"


def load_workflow(path: str | Path | None = None) -> dict[str, Any]:
    p = Path(path) if path else default_workflow_path()
    doc = read_yaml(p, "workflow file", "pass --workflow PATH (workflows/restem.yaml)")
    if not isinstance(doc, dict) or doc.get("kind") != "Workflow":
        raise ConfigError(f"workflow file {p} is not an Argo Workflow (kind: Workflow)")
    return doc


# --- schema


def schema_errors(doc: dict[str, Any]) -> list[str]:
    """Differences between `doc` and its round trip through Argo's models (Hera's): a field the
    models do not know is dropped by the round trip, so a typo shows up here instead of being
    silently ignored; a value of the wrong type fails validation outright."""
    from hera.workflows.models import Workflow
    from pydantic import ValidationError

    try:
        model = Workflow.model_validate(doc)
    except ValidationError as e:
        first = e.errors()[0]
        return [f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"]
    back = model.model_dump(by_alias=True, exclude_none=True, mode="json")
    errors: list[str] = []
    _diff(doc, back, "", errors)
    return errors


def _diff(a: Any, b: Any, path: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in a:
            if key not in b:
                out.append(f"{path}.{key}: not a field of Argo's models (dropped by the round trip)")
            else:
                _diff(a[key], b[key], f"{path}.{key}", out)
        out.extend(f"{path}.{key}: added by the round trip" for key in b if key not in a)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _diff(x, y, f"{path}[{i}]", out)
    elif a != b:
        out.append(f"{path}: {a!r} came back as {b!r}")


def declared_parameters(doc: dict[str, Any]) -> dict[str, str | None]:
    """The workflow's parameters and their defaults (None: required)."""
    return {p["name"]: p.get("value") for p in doc["spec"]["arguments"]["parameters"]}


# --- parameters for a run


def run_parameters(cfg: RunConfig, doc: dict[str, Any], extra: dict[str, str] | None = None) -> dict[str, str]:
    """Every parameter the workflow needs for this config: the run's place, the whole resolved
    config as one line of JSON (so the pods need no copy of the file), its rounds and shard sizes,
    then `extra` (image, GPUs, node selectors, ...) checked against the declared names."""
    if not cfg.store.startswith("s3://"):
        raise ConfigError(f"store {cfg.store!r} is not reachable from pods: set store=s3://bucket/prefix")
    params = {
        "store": cfg.store.rstrip("/"),
        "run-id": cfg.run_id,
        "config": json.dumps(cfg.model_dump(mode="json"), sort_keys=True, separators=(",", ":")),
        "rounds": str(cfg.rounds),
        "sample-shard-size": str(cfg.shards.sample_size),
        "adapt-shard-size": str(cfg.shards.adapt_size),
    }
    declared = declared_parameters(doc)
    for name, value in (extra or {}).items():
        if name not in declared:
            raise ConfigError(f"-p {name}: not a parameter of the workflow; it has {', '.join(declared)}")
        if name in params and value != params[name]:
            raise ConfigError(f"-p {name}: comes from the config; change it there or with --set")
        if name.endswith("-gpus") and value not in ("0", "1"):
            # Every stage is one process on one device; a second GPU would be held and left idle.
            raise ConfigError(f"-p {name}={value}: seal runs each pod on one GPU (no tensor parallelism): "
                              "use 1, or 0 for CPU nodes")
        params[name] = value
    for name, value in declared.items():
        if value is None and name not in params:
            raise ConfigError(f"workflow parameter {name} has no value: pass -p {name}=VALUE")
    return params


def with_model_cache_claim(doc: dict[str, Any], claim: str) -> dict[str, Any]:
    """A copy of the workflow whose /cache volume is this PersistentVolumeClaim instead of an
    emptyDir, so every pod finds the base model another one downloaded (what the chart's
    modelCache does). A volume's type cannot come from a parameter, hence an edit."""
    out = json.loads(json.dumps(doc))
    volumes = out["spec"].get("volumes", [])
    cache = [v for v in volumes if v["name"] == "seal-cache"]
    if not cache:
        raise ConfigError("--model-cache-claim: the workflow has no seal-cache volume to replace")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", claim):
        raise ConfigError(f"--model-cache-claim {claim!r}: not a Kubernetes object name (lower case, digits, - and .)")
    cache[0].clear()
    cache[0].update({"name": "seal-cache", "persistentVolumeClaim": {"claimName": claim}})
    return out


def with_parameters(doc: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
    """A copy of the workflow whose spec.arguments carry these values (what `argo submit -p` does)."""
    out = json.loads(json.dumps(doc))
    for p in out["spec"]["arguments"]["parameters"]:
        if p["name"] in params:
            p["value"] = params[p["name"]]
    return out


# --- dry run: pods and size


def shard_counts(cfg: RunConfig) -> dict[str, int]:
    """Shards per round of each stage (plan and improve are one each)."""
    n = cfg.contexts_per_round
    return {
        "plan": 1,
        "sample": math.ceil(n / cfg.shards.sample_size),
        "adapt": math.ceil(n * cfg.edits_per_context / cfg.shards.adapt_size),
        "improve": 1,
    }


def fanout_groups(shards: int, max_pods: int | None) -> list[str]:
    """Shards cut into at most `max_pods` runs of consecutive shards, as Argo items: '3' or '4-7'.
    Sizes differ by at most one; with shards <= max_pods every pod gets one shard."""
    pods = shards if not max_pods or shards <= max_pods else max_pods
    base, extra = divmod(shards, max(1, pods))
    out, start = [], 0
    for g in range(pods):
        size = base + (1 if g < extra else 0)
        out.append(str(start) if size == 1 else f"{start}-{start + size - 1}")
        start += size
    return out


def pod_counts(cfg: RunConfig, max_pods: int | None) -> dict[str, int]:
    """Pods per round of each stage."""
    return {stage: len(fanout_groups(n, max_pods)) for stage, n in shard_counts(cfg).items()}


def _node(kind: str, name: str, template: str | None, inputs: dict[str, str], children: int, pod: bool,
          retried: bool = False) -> dict[str, Any]:
    """One entry of status.nodes as Argo writes it for a finished node (field names and typical
    values from a real workflow; IDs, times and host names at their usual lengths)."""
    node: dict[str, Any] = {
        "id": f"{WORKFLOW_NAME}-1234567890",
        "name": name,
        "displayName": name.rsplit(".", 1)[-1],
        "type": kind,
        "templateScope": f"local/{WORKFLOW_NAME}",
        "phase": "Succeeded",
        "boundaryID": f"{WORKFLOW_NAME}-1234567890",
        "startedAt": "2026-01-01T00:00:00Z",
        "finishedAt": "2026-01-01T01:00:00Z",
        "progress": "1/1",
        "resourcesDuration": {"cpu": 14400, "memory": 921600, "nvidia.com/gpu": 3600},
    }
    if template:
        node["templateName"] = template
    if inputs:
        node["inputs"] = {"parameters": [{"name": k, "value": v} for k, v in inputs.items()]}
    if children:
        node["children"] = [f"{WORKFLOW_NAME}-1234567890"] * children
    if pod:
        node["outputs"] = {"exitCode": "0"}
        node["hostNodeName"] = "gke-gpu-pool-h100-1a2b3c4d-x9y8"
        node["estimatedDuration"] = 3600
    if retried:
        node["nodeFlag"] = {"retried": True}
    return node


def _task(name: str, template: str, inputs: dict[str, str], outputs: str = "") -> list[dict[str, Any]]:
    """A task with a retryStrategy: a Retry node and the Pod node of its (first) attempt."""
    retry = _node("Retry", name, template, inputs, 1, pod=False)
    pod = _node("Pod", f"{name}(0)", template, inputs, 0, pod=True, retried=True)
    if outputs:
        pod["outputs"]["parameters"] = [{"name": "sample-shards", "value": outputs},
                                        {"name": "adapt-shards", "value": outputs}]
    return [retry, pod]


def status_nodes(cfg: RunConfig, max_pods: int | None) -> list[dict[str, Any]]:
    """The node records of a finished run of restem.yaml with this config."""
    counts = pod_counts(cfg, max_pods)
    nodes = [_node("DAG", WORKFLOW_NAME, "main", {}, 2, pod=False)]
    nodes += _task(f"{WORKFLOW_NAME}.init", "init", {})
    prefix = f"{WORKFLOW_NAME}.rounds"
    for r in range(cfg.rounds):
        rin = {"round": str(r)}
        nodes.append(_node("DAG", prefix, "round", rin, 1, pod=False))
        shards = json.dumps(fanout_groups(max(shard_counts(cfg).values()), max_pods), separators=(",", ":"))
        nodes += _task(f"{prefix}.plan", "plan", rin, outputs=shards)
        for stage in ("sample", "adapt"):
            nodes.append(_node("TaskGroup", f"{prefix}.{stage}", None, {}, counts[stage], pod=False))
            for s, item in enumerate(fanout_groups(shard_counts(cfg)[stage], max_pods)):
                nodes += _task(f"{prefix}.{stage}({s}:{item})", stage, {**rin, "shard": item})
        nodes += _task(f"{prefix}.improve", "improve", rin)
        if r == cfg.rounds - 1:
            nodes.append(_node("Skipped", f"{prefix}.next", "round", {}, 0, pod=False))
        prefix = f"{prefix}.next"
    nodes += _task(f"{WORKFLOW_NAME}.onExit", "finish", {})
    return nodes


def estimate_size(cfg: RunConfig, doc: dict[str, Any], max_pods: int | None) -> dict[str, int]:
    """Bytes of the workflow object at the end of a run: the spec with this run's parameters
    (Argo also copies it into status.storedWorkflowTemplateSpec), every node record, the per-pod
    task-result flags, and a fixed allowance for metadata and managedFields."""
    params = {**{k: v or "x" * 16 for k, v in declared_parameters(doc).items()},
              "config": json.dumps(cfg.model_dump(mode="json"), separators=(",", ":"))}
    spec = len(json.dumps(with_parameters(doc, params)["spec"], separators=(",", ":")))
    nodes = status_nodes(cfg, max_pods)
    node_bytes = sum(len(json.dumps({"k": n}, separators=(",", ":"))) for n in nodes)
    pods = sum(1 for n in nodes if n["type"] == "Pod")
    task_results = pods * len(f'"{WORKFLOW_NAME}-1234567890":true,')
    overhead = 4096
    return {"spec": spec, "nodes": len(nodes), "node_bytes": node_bytes, "pods": pods,
            "total": 2 * spec + node_bytes + task_results + overhead}


STAGE_WORK = {"plan": "chooses contexts, writes plan.json", "improve": "filter + M-step"}


def max_pods_default(doc: dict[str, Any]) -> int | None:
    value = declared_parameters(doc).get("max-pods-per-stage")
    return int(value) if value else None


def dry_run_report(cfg: RunConfig, doc: dict[str, Any], source: str, max_pods: int | None) -> tuple[str, int]:
    """The text `seal plan --dry-run` prints, and the estimated size in bytes."""
    shards = shard_counts(cfg)
    pods = pod_counts(cfg, max_pods)
    size = estimate_size(cfg, doc, max_pods)
    k, f = cfg.edits_per_context, cfg.inner.fits
    rows = [("stage", "shards/round", "pods/round", "total pods", "work per pod"),
            ("init", "-", "-", "1", "writes run.json")]
    for stage, n in pods.items():
        per_pod = math.ceil(shards[stage] / n)
        up_to = "1 shard" if per_pod == 1 else f"<= {per_pod} shards"
        if stage == "sample":
            c = per_pod * cfg.shards.sample_size
            work = f"{up_to}: {c} contexts ({c * k} self-edits)"
        elif stage == "adapt":
            c = per_pod * cfg.shards.adapt_size
            work = f"{up_to}: {c} candidates ({c * f} LoRA fits), model loaded once"
        else:
            work = STAGE_WORK[stage]
        rows.append((stage, str(shards[stage]), str(n), str(n * cfg.rounds), work))
    rows.append(("finish", "-", "-", "1", "records the final status"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [
        f"dry run of workflows/restem.yaml for {source}: {cfg.rounds} rounds x {cfg.contexts_per_round} contexts "
        f"x {k} self-edits x {f} fits; shards of {cfg.shards.sample_size} contexts / {cfg.shards.adapt_size} "
        f"candidates; at most {max_pods or 'unlimited'} pods per stage",
    ]
    for r in rows:
        lines.append(f"{r[0]:<{widths[0]}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(r[1:4], widths[1:], strict=True))
                     + f"  {r[4]}")
    kb = lambda b: f"{b / 1024:,.0f} KB"  # noqa: E731
    total_pods = sum(n for n in pods.values()) * cfg.rounds + 2
    lines.append(
        f"estimated workflow object: {kb(size['total'])} (spec {kb(size['spec'])}, stored twice; "
        f"{size['nodes']:,} node statuses for {total_pods:,} pods); etcd's limit is about {kb(ETCD_LIMIT)}"
    )
    retried = size["total"] + size["node_bytes"] // size["nodes"] * size["pods"]
    lines.append(f"if every pod were retried once: {kb(retried)}")
    if size["total"] > ETCD_LIMIT // 2:
        lines.append("warning: over half of etcd's limit: lower --max-pods (the max-pods-per-stage parameter) "
                     "or raise the shard sizes")
    return "\n".join(lines), size["total"]


# --- template references: every {{...}} resolves to something declared

REF = re.compile(r"\{\{\s*(.*?)\s*\}\}")
EXPR_NAME = re.compile(r"\b(?:inputs|workflow|tasks)(?:\.[\w-]+)+")
GLOBALS = {"workflow.name", "workflow.status", "workflow.namespace", "workflow.uid", "workflow.duration", "item"}


def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []


def references(text: str) -> list[str]:
    """The variables a string refers to; an `{{=expression}}` contributes the names in it."""
    out = []
    for ref in REF.findall(text):
        out.extend(EXPR_NAME.findall(ref) if ref.startswith("=") else [ref])
    return out


def reference_errors(doc: dict[str, Any]) -> list[str]:
    """Every template, task, parameter and output that the workflow names must exist; every task
    passes exactly its template's inputs; {{tasks.T...}} needs T upstream and {{item}} a loop."""
    spec = doc["spec"]
    templates = {t["name"]: t for t in spec["templates"]}
    wf_params = set(declared_parameters(doc))
    errors: list[str] = []
    for field in ("entrypoint", "onExit"):
        if field in spec and spec[field] not in templates:
            errors.append(f"spec.{field}: no template named {spec[field]}")

    def check(ref: str, where: str, inputs: set[str], upstream: dict[str, set[str]], loop: bool) -> None:
        parts = ref.split(".")
        if ref == "item" and not loop:
            errors.append(f"{where}: {{{{item}}}} outside a withParam/withItems task")
        elif ref in GLOBALS:
            return
        elif parts[:2] == ["workflow", "parameters"] and len(parts) == 3:
            if parts[2] not in wf_params:
                errors.append(f"{where}: workflow parameter {parts[2]} is not declared")
        elif parts[:2] == ["inputs", "parameters"] and len(parts) == 3:
            if parts[2] not in inputs:
                errors.append(f"{where}: input parameter {parts[2]} is not declared")
        elif parts[0] == "tasks" and len(parts) == 5 and parts[2:4] == ["outputs", "parameters"]:
            if parts[1] not in upstream:
                errors.append(f"{where}: task {parts[1]} is not upstream of this task")
            elif parts[4] not in upstream[parts[1]]:
                errors.append(f"{where}: task {parts[1]} has no output parameter {parts[4]}")
        else:
            errors.append(f"{where}: unknown reference {{{{{ref}}}}}")

    spec_rest = {k: v for k, v in spec.items() if k != "templates"}
    for s in _strings(spec_rest):
        for ref in references(s):
            check(ref, "spec", set(), {}, False)
    for name, t in templates.items():
        inputs = {p["name"] for p in t.get("inputs", {}).get("parameters", [])}
        body = {k: v for k, v in t.items() if k != "dag"}
        for s in _strings(body):
            for ref in references(s):
                check(ref, f"template {name}", inputs, {}, False)
        tasks = {task["name"]: task for task in t.get("dag", {}).get("tasks", [])}
        for tname, task in tasks.items():
            where = f"template {name} task {tname}"
            callee = templates.get(task["template"])
            if callee is None:
                errors.append(f"{where}: no template named {task['template']}")
                continue
            deps = set(re.findall(r"[A-Za-z][\w-]*", task.get("depends", "")))
            for d in deps - set(tasks):
                errors.append(f"{where}: depends on unknown task {d}")
            up = _upstream(tname, tasks)
            outputs = {u: {p["name"] for p in templates[tasks[u]["template"]].get("outputs", {}).get("parameters", [])}
                       for u in up if tasks[u]["template"] in templates}
            loop = "withParam" in task or "withItems" in task
            for s in _strings({k: v for k, v in task.items() if k not in ("name", "template", "depends")}):
                for ref in references(s):
                    check(ref, where, inputs, outputs, loop)
            passed = {p["name"] for p in task.get("arguments", {}).get("parameters", [])}
            wanted = {p["name"] for p in callee.get("inputs", {}).get("parameters", []) if "value" not in p}
            declared = {p["name"] for p in callee.get("inputs", {}).get("parameters", [])}
            for missing in sorted(wanted - passed):
                errors.append(f"{where}: does not pass input {missing} of template {callee['name']}")
            for extra in sorted(passed - declared):
                errors.append(f"{where}: passes {extra}, which template {callee['name']} does not declare")
    return errors


def _upstream(task: str, tasks: dict[str, dict[str, Any]]) -> set[str]:
    seen: set[str] = set()
    todo = [task]
    while todo:
        for d in re.findall(r"[A-Za-z][\w-]*", tasks.get(todo.pop(), {}).get("depends", "")):
            if d in tasks and d not in seen:
                seen.add(d)
                todo.append(d)
    return seen


def container_commands(doc: dict[str, Any]) -> dict[str, list[str]]:
    """template name -> the container's command plus args."""
    return {t["name"]: [*t["container"].get("command", []), *t["container"].get("args", [])]
            for t in doc["spec"]["templates"] if "container" in t}
