"""A local executor for the Argo Workflows features workflows/restem.yaml uses: a dev and test tool.

It runs a Workflow's DAG on this machine, each container's command as a local process
(`seal ...` becomes `python -m seal.cli ...`), so the wiring of restem.yaml (parameters, fan-out,
output parameters, the round recursion, the exit handler, retry rules) can be checked end to end
without Kubernetes. It implements exactly these features and raises `Unsupported` on any other
field, so a workflow that grows a new feature cannot pass here by being silently ignored:

- spec: entrypoint, arguments.parameters, templates, onExit, volumes (configMap), fields that
  only matter to a cluster (serviceAccountName, activeDeadlineSeconds, podGC, ttlStrategy), and
  metrics (the controller's Prometheus metrics: rendered at the end, so their variables must resolve);
- templates: dag (tasks with template, depends as `a && b`, arguments.parameters, withParam,
  withItems, when) or container (command, args, env values, envFrom secretRef, volumeMounts,
  image and resources ignored), inputs/outputs parameters (outputs from files), retryStrategy
  (limit and expression honoured, backoff not waited for), activeDeadlineSeconds (a process
  timeout), and parallelism, timeout and podSpecPatch (rendered and parsed, no local effect);
- variables: {{workflow.parameters.x}}, {{workflow.name}}, {{workflow.status}} and
  {{workflow.duration}} (exit handler and metrics),
  {{inputs.parameters.x}}, {{tasks.t.outputs.parameters.p}}, {{item}}, and `{{=...}}` expressions
  made of asInt(), + - and those names.

Tasks run one at a time, in dependency order; a DAG stops scheduling after a failed task, as
Argo's does. Each pod gets its own folder standing in for its file system: arguments and output
paths in the folder of an output parameter's file or under a volume's mountPath are mapped into it.
Pods see the executor's environment
minus AWS_* and SEAL_S3_* variables, plus what their envFrom Secrets hold (`secrets` below), so a
workflow that forgets to pass the S3 credentials fails here too.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WORKFLOW_NAME = "seal-restem-local"

SPEC_FIELDS = {"entrypoint", "arguments", "templates", "onExit", "volumes", "serviceAccountName",
               "activeDeadlineSeconds", "podGC", "ttlStrategy", "metrics"}
TEMPLATE_FIELDS = {"name", "inputs", "outputs", "dag", "container", "retryStrategy", "activeDeadlineSeconds",
                   "timeout", "podSpecPatch", "parallelism"}
CONTAINER_FIELDS = {"image", "command", "args", "env", "envFrom", "volumeMounts", "resources"}
TASK_FIELDS = {"name", "template", "depends", "arguments", "withParam", "withItems", "when"}
RETRY_FIELDS = {"limit", "retryPolicy", "backoff", "expression"}
REF = re.compile(r"\{\{\s*(.*?)\s*\}\}")


class Unsupported(Exception):
    """The workflow uses an Argo feature this executor does not implement."""


class WorkflowFailed(Exception):
    pass


@dataclass
class Pod:
    """One container run: what the tests inspect."""

    template: str
    command: list[str]
    exit_code: int
    attempt: int
    stderr_tail: str = ""


@dataclass
class Result:
    phase: str  # Succeeded or Failed, like {{workflow.status}}
    pods: list[Pod] = field(default_factory=list)
    message: str = ""
    metrics: list[dict[str, Any]] = field(default_factory=list)  # spec.metrics, rendered


def _only(obj: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise Unsupported(f"{where}: field(s) {', '.join(extra)} not implemented by the local executor")


class LocalArgo:
    def __init__(self, workflow: dict[str, Any], parameters: dict[str, str] | None = None,
                 secrets: dict[str, dict[str, str]] | None = None, config_maps: dict[str, str] | None = None,
                 cwd: str | Path | None = None, workdir: str | Path | None = None):
        _only(workflow, {"apiVersion", "kind", "metadata", "spec"}, "workflow")
        if workflow.get("kind") != "Workflow":
            raise Unsupported(f"kind {workflow.get('kind')}: only Workflow is implemented")
        self.spec = workflow["spec"]
        _only(self.spec, SPEC_FIELDS, "spec")
        self.templates = {t["name"]: t for t in self.spec["templates"]}
        for t in self.templates.values():
            self._check_template(t)
        declared = {p["name"]: p.get("value") for p in self.spec.get("arguments", {}).get("parameters", [])}
        unknown = set(parameters or {}) - set(declared)
        if unknown:
            raise ValueError(f"parameters not declared by the workflow: {sorted(unknown)}")
        self.globals = {**declared, **(parameters or {})}
        missing = [k for k, v in self.globals.items() if v is None]
        if missing:
            raise ValueError(f"workflow parameters without a value: {missing}")
        self.globals = {k: str(v) for k, v in self.globals.items()}
        self.secrets = secrets or {}
        self.config_maps = config_maps or {}
        self.cwd = str(cwd or os.getcwd())
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="argo-local-"))
        self.status = ""
        self.pods: list[Pod] = []
        self._pod_seq = 0

    # --- checks

    def _check_template(self, t: dict[str, Any]) -> None:
        where = f"template {t['name']}"
        _only(t, TEMPLATE_FIELDS, where)
        if ("dag" in t) == ("container" in t):
            raise Unsupported(f"{where}: needs one of dag or container (steps, script, ...: not implemented)")
        for p in t.get("inputs", {}).get("parameters", []):
            _only(p, {"name", "value"}, f"{where} input {p.get('name')}")
        _only(t.get("inputs", {}), {"parameters"}, f"{where} inputs")
        _only(t.get("outputs", {}), {"parameters"}, f"{where} outputs")
        for p in t.get("outputs", {}).get("parameters", []):
            _only(p, {"name", "valueFrom"}, f"{where} output {p['name']}")
            _only(p["valueFrom"], {"path"}, f"{where} output {p['name']} valueFrom")
        if "retryStrategy" in t:
            _only(t["retryStrategy"], RETRY_FIELDS, f"{where} retryStrategy")
        if "container" in t:
            c = t["container"]
            _only(c, CONTAINER_FIELDS, f"{where} container")
            for e in c.get("env", []):
                _only(e, {"name", "value"}, f"{where} env {e.get('name')}")
            for e in c.get("envFrom", []):
                _only(e, {"secretRef"}, f"{where} envFrom")
        for task in t.get("dag", {}).get("tasks", []):
            _only(task, TASK_FIELDS, f"{where} task {task['name']}")
            if task["template"] not in self.templates:
                raise Unsupported(f"{where} task {task['name']}: no template {task['template']}")
        _only(t.get("dag", {}), {"tasks"}, f"{where} dag")

    # --- variables

    def render(self, text: str, scope: dict[str, str]) -> str:
        def one(m: re.Match) -> str:
            ref = m.group(1)
            if ref.startswith("="):
                return str(evaluate(ref[1:], lambda name: self._lookup(name, scope)))
            return self._lookup(ref, scope)

        return REF.sub(one, text)

    def _lookup(self, name: str, scope: dict[str, str]) -> str:
        if name.startswith("workflow.parameters."):
            key = name.split(".", 2)[2]
            if key in self.globals:
                return self.globals[key]
        elif name == "workflow.name":
            return WORKFLOW_NAME
        elif name == "workflow.status" and self.status:
            return self.status
        elif name == "workflow.duration" and self.status:
            return f"{time.monotonic() - self._started:.3f}"
        elif name in scope:
            return scope[name]
        raise Unsupported(f"{{{{{name}}}}} does not resolve here (known: {sorted(scope)})")

    def render_all(self, obj: Any, scope: dict[str, str]) -> Any:
        if isinstance(obj, str):
            return self.render(obj, scope)
        if isinstance(obj, list):
            return [self.render_all(x, scope) for x in obj]
        if isinstance(obj, dict):
            return {k: self.render_all(v, scope) for k, v in obj.items()}
        return obj

    # --- running

    def run(self) -> Result:
        self._started = time.monotonic()
        phase, message = "Succeeded", ""
        try:
            self.execute(self.spec["entrypoint"], {})
        except WorkflowFailed as e:
            phase, message = "Failed", str(e)
        if "onExit" in self.spec:
            self.status = phase
            try:
                self.execute(self.spec["onExit"], {})
            except WorkflowFailed as e:
                phase, message = "Failed", message or f"exit handler: {e}"
        self.status = phase
        metrics = [self.render_all(m, {}) for m in self.spec.get("metrics", {}).get("prometheus", [])]
        return Result(phase, self.pods, message, metrics)

    def execute(self, name: str, inputs: dict[str, str]) -> dict[str, str]:
        """Run template `name` with these input values; returns its output parameters."""
        t = self.templates[name]
        declared = {p["name"]: p.get("value") for p in t.get("inputs", {}).get("parameters", [])}
        if set(inputs) - set(declared):
            raise Unsupported(f"template {name}: given undeclared inputs {sorted(set(inputs) - set(declared))}")
        values = {**declared, **inputs}
        if any(v is None for v in values.values()):
            empty = [k for k, v in values.items() if v is None]
            raise WorkflowFailed(f"template {name}: inputs without a value: {empty}")
        scope = {f"inputs.parameters.{k}": str(v) for k, v in values.items()}
        if "dag" in t:
            return self._dag(t, scope)
        return self._pod(t, scope)

    def _dag(self, t: dict[str, Any], scope: dict[str, str]) -> dict[str, str]:
        tasks = {task["name"]: task for task in t["dag"]["tasks"]}
        deps = {n: _depends(task.get("depends", ""), n) for n, task in tasks.items()}
        for n, d in deps.items():
            if d - set(tasks):
                raise Unsupported(f"task {n} depends on unknown task(s) {sorted(d - set(tasks))}")
        done: set[str] = set()
        task_scope = dict(scope)
        while len(done) < len(tasks):
            ready = [n for n in tasks if n not in done and deps[n] <= done]
            if not ready:
                raise Unsupported(f"template {t['name']}: dependency cycle among {sorted(set(tasks) - done)}")
            for n in ready:  # in file order, one at a time
                self._task(tasks[n], task_scope)
                done.add(n)
        return {}

    def _task(self, task: dict[str, Any], scope: dict[str, str]) -> None:
        name = task["name"]
        if "when" in task:
            cond = self.render(task["when"], scope)
            if not evaluate(cond, _no_names):
                return  # Skipped; `depends: name` counts a skipped task as done, as in Argo
        args = task.get("arguments", {})
        _only(args, {"parameters"}, f"task {name} arguments")
        if "withParam" in task or "withItems" in task:
            if "withParam" in task:
                raw = self.render(task["withParam"], scope)
                try:
                    items = json.loads(raw)
                except json.JSONDecodeError:
                    raise WorkflowFailed(f"task {name}: withParam is not a JSON list: {raw[:80]}") from None
            else:
                items = task["withItems"]
            if not isinstance(items, list) or any(isinstance(i, dict | list) for i in items):
                raise Unsupported(f"task {name}: only lists of numbers or strings are implemented as items")
            item_list = [str(i) for i in items]
        else:
            item_list = [None]
        outputs: dict[str, str] = {}
        for item in item_list:
            item_scope = scope if item is None else {**scope, "item": item}
            inputs = {p["name"]: self.render(str(p["value"]), item_scope) for p in args.get("parameters", [])}
            outputs = self.execute(task["template"], inputs)
        if item_list == [None]:
            for k, v in outputs.items():
                scope[f"tasks.{name}.outputs.parameters.{k}"] = v

    def _pod(self, t: dict[str, Any], scope: dict[str, str]) -> dict[str, str]:
        self._pod_seq += 1
        root = self.workdir / f"pod-{self._pod_seq:04d}-{t['name']}"
        rendered = self.render_all({k: v for k, v in t.items() if k not in ("inputs",)}, scope)
        if "podSpecPatch" in rendered:
            try:
                json.loads(rendered["podSpecPatch"])
            except json.JSONDecodeError as e:
                raise WorkflowFailed(f"template {t['name']}: podSpecPatch is not JSON: {e}") from None
        c = rendered["container"]
        mounts = {}  # the pod's own files: its output files' folders and its volumes
        for p in t.get("outputs", {}).get("parameters", []):
            folder = os.path.dirname(p["valueFrom"]["path"])
            mounts[folder.rstrip("/") + "/"] = root / "files" / folder.strip("/")
        for m in c.get("volumeMounts", []):
            _only(m, {"name", "mountPath", "readOnly"}, f"template {t['name']} volumeMount")
            mounts[m["mountPath"].rstrip("/") + "/"] = self._volume(m["name"], root)
        argv = [_map_path(a, mounts) for a in [*c.get("command", []), *c.get("args", [])]]
        if argv and argv[0] == "seal":
            argv = [sys.executable, "-m", "seal.cli", *argv[1:]]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SEAL_S3_"))}
        for ref in c.get("envFrom", []):
            secret = ref["secretRef"]["name"]
            if secret not in self.secrets:
                raise WorkflowFailed(f"template {t['name']}: Secret {secret} does not exist ({sorted(self.secrets)})")
            env.update(self.secrets[secret])
        env.update({e["name"]: e["value"] for e in c.get("env", [])})
        for local in mounts.values():
            local.mkdir(parents=True, exist_ok=True)
        retry = rendered.get("retryStrategy", {})
        limit = int(retry.get("limit", 0))
        deadline = int(rendered["activeDeadlineSeconds"]) if "activeDeadlineSeconds" in rendered else None
        for attempt in range(limit + 1):
            try:
                proc = subprocess.run(argv, cwd=self.cwd, env=env, capture_output=True, text=True, timeout=deadline)
                code, status, message = proc.returncode, "Succeeded" if proc.returncode == 0 else "Failed", ""
                tail = proc.stderr[-2000:]
            except subprocess.TimeoutExpired:
                code, status, message, tail = -1, "Failed", "Pod was active on the node longer than the deadline", ""
            self.pods.append(Pod(t["name"], argv, code, attempt, tail))
            if code == 0:
                break
            last = {"lastRetry.exitCode": str(code), "lastRetry.status": status, "lastRetry.message": message}
            if attempt == limit or not evaluate(retry.get("expression", "true"), last.__getitem__):
                raise WorkflowFailed(f"template {t['name']} exited {code}: {tail.strip().splitlines()[-1:] or ''}")
        outputs = {}
        for p in t.get("outputs", {}).get("parameters", []):
            path = Path(_map_path(p["valueFrom"]["path"], mounts))
            if not path.is_file():
                raise WorkflowFailed(f"template {t['name']}: output {p['name']} file {p['valueFrom']['path']} missing")
            outputs[p["name"]] = path.read_text()
        return outputs

    def _volume(self, name: str, root: Path) -> Path:
        vols = {v["name"]: v for v in self.spec.get("volumes", [])}
        if name not in vols:
            raise Unsupported(f"volumeMount {name}: no such volume in spec.volumes")
        v = vols[name]
        _only(v, {"name", "configMap"}, f"volume {name}")
        _only(v["configMap"], {"name", "optional"}, f"volume {name} configMap")
        cm = self.render(v["configMap"]["name"], {})
        target = root / "volumes" / name
        if cm in self.config_maps:
            shutil.copytree(self.config_maps[cm], target)
        elif v["configMap"].get("optional"):
            target.mkdir(parents=True)
        else:
            raise WorkflowFailed(f"ConfigMap {cm} does not exist")
        return target


def _map_path(arg: str, mounts: dict[str, Path]) -> str:
    for prefix, local in mounts.items():
        if arg.startswith(prefix) or arg == prefix.rstrip("/"):
            return str(local / arg[len(prefix):])
    return arg


def _depends(expr: str, task: str) -> set[str]:
    names = [n.strip() for n in expr.split("&&")] if expr.strip() else []
    if any(not re.fullmatch(r"[A-Za-z][\w-]*", n) for n in names):
        raise Unsupported(f"task {task}: depends {expr!r}: only `a && b` of task names is implemented")
    return set(names)


def _no_names(name: str) -> str:
    raise Unsupported(f"`when` refers to {name}: only literal comparisons are implemented")


# --- the expression subset: Argo's govaluate `when` and expr `{{=...}}`, as far as restem.yaml goes

_NAME = re.compile(r"\b(?:lastRetry|inputs|workflow|tasks)(?:\.[\w-]+)+")


def evaluate(text: str, lookup: Any) -> Any:
    """Evaluate `&&`, `||`, `!`, comparisons, + and -, asInt(), `matches` (a regex test) over
    numbers, quoted strings and dotted names (resolved by `lookup`). Anything else is Unsupported."""
    names: dict[str, str] = {}

    def name_slot(m: re.Match) -> str:
        slot = f"_v{len(names)}"
        names[slot] = m.group(0)
        return slot

    src = _NAME.sub(name_slot, text.strip())
    src = re.sub(r"(\S+)\s+matches\s+(\"[^\"]*\"|'[^']*')", r"_matches(\1, \2)", src)
    parts = re.split(r"(\"[^\"]*\"|'[^']*')", src)  # operators are rewritten outside string literals only
    for i in range(0, len(parts), 2):
        p = parts[i].replace("&&", " and ").replace("||", " or ").replace("!=", "\0").replace("!", " not ")
        parts[i] = re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", p.replace("\0", "!=")))
    try:
        tree = ast.parse(f"({''.join(parts)})", mode="eval")
    except SyntaxError:
        raise Unsupported(f"expression {text!r} is outside the implemented subset") from None

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float | str | bool):
            return node.value
        if isinstance(node, ast.Name) and node.id in names:
            return lookup(names[node.id])
        if isinstance(node, ast.BoolOp):
            vals = [ev(v) for v in node.values]
            return all(vals) if isinstance(node.op, ast.And) else any(vals)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return not ev(node.operand)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub):
            a, b = _num(ev(node.left)), _num(ev(node.right))
            return a + b if isinstance(node.op, ast.Add) else a - b
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _COMPARE:
            a, b = ev(node.left), ev(node.comparators[0])
            if isinstance(a, str) != isinstance(b, str):
                a, b = _num(a), _num(b)
            return _COMPARE[type(node.ops[0])](a, b)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
            if node.func.id == "asInt" and len(node.args) == 1:
                return int(_num(ev(node.args[0])))
            if node.func.id == "_matches" and len(node.args) == 2:
                return re.search(ev(node.args[1]), str(ev(node.args[0]))) is not None  # RE2 syntax used here = Python's
        raise Unsupported(f"expression {text!r}: {ast.dump(node)[:60]} is outside the implemented subset")

    return ev(tree)


_COMPARE = {ast.Lt: lambda a, b: a < b, ast.LtE: lambda a, b: a <= b, ast.Gt: lambda a, b: a > b,
            ast.GtE: lambda a, b: a >= b, ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b}


def _num(v: Any) -> float | int:
    if isinstance(v, bool):
        raise Unsupported("arithmetic on booleans")
    if isinstance(v, int | float):
        return v
    try:
        return int(v)
    except ValueError:
        return float(v)


def run_workflow(path: str | Path, parameters: dict[str, str], secrets: dict[str, dict[str, str]],
                 **kwargs: Any) -> Result:
    import yaml

    doc = yaml.safe_load(Path(path).read_text())
    return LocalArgo(doc, parameters, secrets, **kwargs).run()
