"""A local executor for the Argo Workflows features workflows/restem.yaml uses: a dev and test tool.

It runs a Workflow's DAG on this machine, each container's command as a local process
(`seal ...` becomes `python -m seal.cli ...`), so the wiring of restem.yaml (parameters, fan-out,
output parameters, the round recursion, the exit handler, retry rules) can be checked end to end
without Kubernetes. It implements exactly these features and raises `Unsupported` on any other
field, so a workflow that grows a new feature cannot pass here by being silently ignored:

- spec: entrypoint, arguments.parameters, templates, onExit, volumes (configMap, emptyDir),
  activeDeadlineSeconds (the workflow's deadline, below), fields that only matter to a cluster
  (serviceAccountName, automountServiceAccountToken, executor, securityContext, podGC,
  ttlStrategy), and metrics (the controller's Prometheus metrics: rendered at the end, so their
  variables must resolve);
- templates: dag (tasks with template, depends as `a && b`, arguments.parameters, withParam,
  withItems, when) or container (command, args, env values, envFrom secretRef, volumeMounts,
  image and resources ignored), inputs/outputs parameters (outputs from files), retryStrategy,
  activeDeadlineSeconds, timeout, parallelism (of a DAG's fan-out), and podSpecPatch (rendered
  and parsed);
- variables: {{workflow.parameters.x}}, {{workflow.name}}, {{workflow.status}} and
  {{workflow.duration}} (exit handler and metrics),
  {{inputs.parameters.x}}, {{tasks.t.outputs.parameters.p}}, {{item}}, and `{{=...}}` expressions
  made of asInt(), + - and those names.

Time, as the controller keeps it (argoproj/argo-workflows v3.6 and v4.1 source; each rule below
names the file and function it follows). A fake `Clock` runs the schedule, so tests check hours of
cluster time in milliseconds, and a `cluster` callable says what happens to each pod attempt
(`Attempt`: how long it waits for a node, how long it runs, how it ends, or a `Failure` the
cluster inflicts: an eviction, an OOM kill, a preemption, a node shutdown, each with the phase,
message and exit code the controller would record). Without a `cluster`, every pod runs its real
command and the clock advances by its wall time.

- Pod deadline (workflow/controller/workflowpod.go, podBuilder.build / createWorkflowPod): the
  pod's activeDeadlineSeconds is the template's, or the workflow's remaining time when that is
  shorter (exit handlers ignore the workflow deadline). With a template `timeout`, the deadline is
  the attempt node's start + timeout (operator.go, checkTemplateTimeouts) and it replaces the
  pod's activeDeadlineSeconds by `deadline - now` whenever the deadline lies ahead (the code
  compares now - deadline, a negative number, with activeDeadlineSeconds), longer or shorter.
- The kubelet counts activeDeadlineSeconds from the pod's start on a node, not from its creation,
  and ends the pod Failed with "Pod was active on the node longer than the specified deadline";
  the container gets SIGTERM (seal exits 75 on it, seal/cli.py).
- Pending (operator.go, executeTemplate -> checkTemplateTimeouts): a node still Pending past its
  `timeout` deadline fails with "timeout". The check runs on the node executeTemplate holds: the
  pod node for a template without retryStrategy, the Retry node (phase Running) for one with it,
  so it never fires for retried templates. Past the workflow's deadline a Pending node fails with
  "Step exceeded its deadline" (operator.go, podReconciliation's deadline sweep).
- Executor deadline (workflowpod.go, getDeadline -> ARGO_DEADLINE; workflow/executor/executor.go,
  monitorDeadline): the wait container kills main at the earlier of the workflow's deadline and the
  retry's execution deadline (backoff.maxDuration, below); main gets SIGTERM.
- Retries (operator.go, processNodeRetries), in the controller's order: past the workflow deadline,
  no retry; with backoff.maxDuration, a deadline from the FIRST attempt's start: past it "Max
  duration limit exceeded", and a backoff ending past it "Backoff would exceed max duration limit";
  the wait is duration * factor^(attempts-1) (capped by backoff.cap) from the last attempt's end,
  and it is waited before the policy, the limit ("No more retries left") and the expression are
  looked at; later attempts carry maxDuration's deadline as their execution deadline. The
  expression sees lastRetry.exitCode ("-1" when the pod reported none), .status (the node phase:
  Failed, or Error for a pod that is gone), .message and .duration (buildRetryStrategyLocalScope).
- Failure messages (operator.go, inferFailedReason; "pod deleted" in podReconciliation): a pod
  with a status message (evictions, deadline, node shutdown) fails with that message; otherwise
  with "<container>: <reason> (exit code N)", e.g. "main: OOMKilled (exit code 137)".

Tasks run in dependency order; a fan-out's items start together on the clock (at most the DAG
template's `parallelism` at once) and the task ends when its last item does; a DAG stops
scheduling after a failed task, as Argo's does. Each pod gets its own folder standing in for its
file system: arguments and output paths in the folder of an output parameter's file or under a
volume's mountPath are mapped into it. Pods see the executor's environment minus AWS_* and
SEAL_S3_* variables, plus what their envFrom Secrets hold (`secrets` below), so a workflow that
forgets to pass the S3 credentials fails here too.
"""

from __future__ import annotations

import ast
import heapq
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WORKFLOW_NAME = "seal-restem-local"

SPEC_FIELDS = {"entrypoint", "arguments", "templates", "onExit", "volumes", "serviceAccountName",
               "automountServiceAccountToken", "executor", "securityContext",
               "activeDeadlineSeconds", "podGC", "ttlStrategy", "metrics"}
TEMPLATE_FIELDS = {"name", "inputs", "outputs", "dag", "container", "retryStrategy", "activeDeadlineSeconds",
                   "timeout", "podSpecPatch", "parallelism"}
CONTAINER_FIELDS = {"image", "command", "args", "env", "envFrom", "volumeMounts", "resources"}
TASK_FIELDS = {"name", "template", "depends", "arguments", "withParam", "withItems", "when"}
RETRY_FIELDS = {"limit", "retryPolicy", "backoff", "expression", "affinity"}
BACKOFF_FIELDS = {"duration", "factor", "maxDuration", "cap"}
REF = re.compile(r"\{\{\s*(.*?)\s*\}\}")

# What Kubernetes and Argo write, verbatim, for the ways a pod ends (see Failure below).
DEADLINE_MESSAGE = "Pod was active on the node longer than the specified deadline"  # kubelet, reason DeadlineExceeded
SIGTERM_EXIT = 75  # seal's exit code on SIGTERM (seal/cli.py); Kubernetes stops pods with SIGTERM, then SIGKILL


class Unsupported(Exception):
    """The workflow uses an Argo feature this executor does not implement."""


class WorkflowFailed(Exception):
    pass


@dataclass
class Clock:
    """Simulated time in seconds since the workflow was submitted."""

    now: float = 0.0


@dataclass
class Failure:
    """Something the cluster does to a running pod, as the controller then records it."""

    phase: str  # the node phase: Failed, or Error for a pod that is gone
    message: str
    exit_code: int | None  # main's exit code; None: the pod vanished before reporting one (lastRetry.exitCode "-1")

    @staticmethod
    def evicted(resource: str = "memory") -> Failure:
        """Node-pressure eviction by the kubelet (hard threshold: no grace period, SIGKILL). The pod
        ends Failed, reason Evicted, and this status message, which Argo copies to the node."""
        return Failure("Failed", f"The node was low on resource: {resource}. Threshold quantity: 100Mi, "
                       "available: 51200Ki. Container main was using 61Gi, request is 32Gi, has larger "
                       f"consumption of {resource}. ", 137)

    @staticmethod
    def oom_killed() -> Failure:
        """The kernel OOM-kills main: no pod status message, so Argo writes the container's reason."""
        return Failure("Failed", "main: OOMKilled (exit code 137)", 137)

    @staticmethod
    def preempted() -> Failure:
        """The scheduler preempts the pod for a higher-priority one: SIGTERM, then the pod is deleted
        and the controller marks the node Error "pod deleted" without an exit code."""
        return Failure("Error", "pod deleted", None)

    @staticmethod
    def node_shutdown() -> Failure:
        """Graceful node shutdown (spot/preemptible VMs): SIGTERM, pod Failed with this message."""
        return Failure("Failed", "Pod was terminated in response to imminent node shutdown.", SIGTERM_EXIT)


@dataclass
class Attempt:
    """What happens to one pod attempt on the simulated cluster."""

    pending_s: float = 0.0  # waiting for a node (unschedulable, scaling up): the pod's Pending phase
    run_s: float | None = 0.0  # seconds main runs before it exits by itself; None: run the real command
    exit_code: int = 0  # its exit code then
    fail_after_s: float | None = None  # the cluster ends it this many seconds into running...
    failure: Failure | None = None  # ... this way
    files: dict[str, str] = field(default_factory=dict)  # files main writes (output parameters), by container path


@dataclass
class PodRequest:
    """A pod about to be created: what a `cluster` callable decides on."""

    template: str
    attempt: int
    inputs: dict[str, str]
    command: list[str]
    created: float


@dataclass
class Pod:
    """One pod attempt: what the tests inspect. Times are on the executor's clock."""

    template: str
    command: list[str]
    exit_code: int
    attempt: int
    stderr_tail: str = ""
    inputs: dict[str, str] = field(default_factory=dict)
    phase: str = ""  # Succeeded, Failed or Error (the node's phase)
    message: str = ""
    created: float = 0.0  # the attempt node's start (pod creation)
    started: float | None = None  # on a node (None: never left Pending)
    finished: float = 0.0
    deadline_s: float | None = None  # the activeDeadlineSeconds the controller gave the pod


@dataclass
class Result:
    phase: str  # Succeeded or Failed, like {{workflow.status}}
    pods: list[Pod] = field(default_factory=list)
    message: str = ""
    metrics: list[dict[str, Any]] = field(default_factory=list)  # spec.metrics, rendered
    finished: float = 0.0  # the clock when the workflow ended


def _only(obj: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise Unsupported(f"{where}: field(s) {', '.join(extra)} not implemented by the local executor")


def parse_duration(text: str | int) -> float:
    """Argo's duration strings (pkg/apis/workflow/v1alpha1/utils.go, ParseStringToDuration): a
    bare integer is seconds, else Go's time.ParseDuration ("1h30m", "90s", "2h")."""
    text = str(text).strip()
    if re.fullmatch(r"-?\d+", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise Unsupported(f"duration {text!r}: not a Go duration")
    unit = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * unit[u] for n, u in parts)


class LocalArgo:
    def __init__(self, workflow: dict[str, Any], parameters: dict[str, str] | None = None,
                 secrets: dict[str, dict[str, str]] | None = None, config_maps: dict[str, str] | None = None,
                 cwd: str | Path | None = None, workdir: str | Path | None = None,
                 cluster: Callable[[PodRequest], Attempt | None] | None = None, clock: Clock | None = None):
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
        self.cluster = cluster
        self.clock = clock or Clock()
        self.status = ""
        self.pods: list[Pod] = []
        self._pod_seq = 0
        self._on_exit = False
        ads = self.spec.get("activeDeadlineSeconds")
        self.wf_deadline = self.clock.now + float(ads) if ads is not None else None

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
            rs = t["retryStrategy"]
            _only(rs, RETRY_FIELDS, f"{where} retryStrategy")
            _only(rs.get("backoff", {}), BACKOFF_FIELDS, f"{where} retryStrategy.backoff")
            if rs.get("retryPolicy", "OnFailure") not in ("Always", "OnFailure", "OnError"):
                raise Unsupported(f"{where}: retryPolicy {rs['retryPolicy']} not implemented")
            if rs.get("affinity") not in (None, {"nodeAntiAffinity": {}}):
                raise Unsupported(f"{where}: retryStrategy.affinity other than nodeAntiAffinity: {{}}")
        if "dag" not in t and "parallelism" in t:
            raise Unsupported(f"{where}: parallelism is implemented for dag templates only")
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
            return f"{self.clock.now:.3f}"
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
        phase, message = "Succeeded", ""
        try:
            self.execute(self.spec["entrypoint"], {})
        except WorkflowFailed as e:
            phase, message = "Failed", str(e)
        if "onExit" in self.spec:
            self.status = phase
            self._on_exit = True
            try:
                self.execute(self.spec["onExit"], {})
            except WorkflowFailed as e:
                phase, message = "Failed", message or f"exit handler: {e}"
        self.status = phase
        metrics = [self.render_all(m, {}) for m in self.spec.get("metrics", {}).get("prometheus", [])]
        return Result(phase, self.pods, message, metrics, self.clock.now)

    def execute(self, name: str, inputs: dict[str, str], parallelism: int | None = None) -> dict[str, str]:
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
            return self._dag(t, scope, parallelism)
        return self._node(t, scope, {k: str(v) for k, v in values.items()})

    def _dag(self, t: dict[str, Any], scope: dict[str, str], outer: int | None) -> dict[str, str]:
        tasks = {task["name"]: task for task in t["dag"]["tasks"]}
        deps = {n: _depends(task.get("depends", ""), n) for n, task in tasks.items()}
        for n, d in deps.items():
            if d - set(tasks):
                raise Unsupported(f"task {n} depends on unknown task(s) {sorted(d - set(tasks))}")
        # A template's parallelism bounds the pods running at once below it (operator.go,
        # checkParallelism); an inner DAG inherits the tighter of its own and its parent's.
        limits = [p for p in (outer, t.get("parallelism")) if p]
        parallelism = min(limits) if limits else None
        done: set[str] = set()
        task_scope = dict(scope)
        while len(done) < len(tasks):
            ready = [n for n in tasks if n not in done and deps[n] <= done]
            if not ready:
                raise Unsupported(f"template {t['name']}: dependency cycle among {sorted(set(tasks) - done)}")
            for n in ready:  # in file order, one at a time
                self._task(tasks[n], task_scope, parallelism)
                done.add(n)
        return {}

    def _task(self, task: dict[str, Any], scope: dict[str, str], parallelism: int | None) -> None:
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
        # The items of a fan-out start together, at most `parallelism` at once; each takes a slot
        # when one frees up, and the task ends with its last item.
        start = self.clock.now
        slots = [start] * min(len(item_list), parallelism or len(item_list))
        heapq.heapify(slots)
        end = start
        for item in item_list:
            self.clock.now = heapq.heappop(slots)
            item_scope = scope if item is None else {**scope, "item": item}
            inputs = {p["name"]: self.render(str(p["value"]), item_scope) for p in args.get("parameters", [])}
            outputs = self.execute(task["template"], inputs, parallelism)
            heapq.heappush(slots, self.clock.now)
            end = max(end, self.clock.now)
        self.clock.now = end
        if item_list == [None]:
            for k, v in outputs.items():
                scope[f"tasks.{name}.outputs.parameters.{k}"] = v

    # --- one container template: its attempts, deadlines and retries

    def _node(self, t: dict[str, Any], scope: dict[str, str], inputs: dict[str, str]) -> dict[str, str]:
        rendered = self.render_all({k: v for k, v in t.items() if k not in ("inputs",)}, scope)
        if "podSpecPatch" in rendered:
            try:
                json.loads(rendered["podSpecPatch"])
            except json.JSONDecodeError as e:
                raise WorkflowFailed(f"template {t['name']}: podSpecPatch is not JSON: {e}") from None
        retry = rendered.get("retryStrategy")
        timeout = parse_duration(rendered["timeout"]) if rendered.get("timeout") else None
        first_start: float | None = None
        execution_deadline: float | None = None  # from backoff.maxDuration, for attempts after the first
        attempt = 0
        while True:
            pod, outputs = self._attempt(t, rendered, inputs, attempt, timeout, execution_deadline,
                                         pending_check=retry is None)
            first_start = pod.created if first_start is None else first_start
            if pod.phase == "Succeeded":
                return outputs
            if retry is None:
                raise WorkflowFailed(self._failure(t, pod, pod.message))
            # operator.go, processNodeRetries, in its order: workflow deadline, maxDuration, backoff
            # (waited before anything else is decided), retryPolicy, limit, expression.
            n = attempt + 1  # attempts made: len(childNodeIds)
            if self.wf_deadline is not None and self.clock.now > self.wf_deadline:
                raise WorkflowFailed(self._failure(t, pod, f"retry exceeded workflow deadline ({pod.message})"))
            limit = int(retry["limit"]) if "limit" in retry else None
            backoff = retry.get("backoff")
            if backoff:
                max_deadline = None
                if backoff.get("maxDuration"):
                    max_deadline = first_start + parse_duration(backoff["maxDuration"])
                    if self.clock.now > max_deadline:
                        raise WorkflowFailed(self._failure(t, pod, "Max duration limit exceeded"))
                wait = parse_duration(backoff["duration"])
                factor = int(backoff.get("factor", 0) or 0)
                if factor > 0:
                    wait *= factor ** (n - 1)
                if backoff.get("cap"):
                    wait = min(wait, parse_duration(backoff["cap"]))
                waiting_deadline = pod.finished + wait
                if max_deadline is not None and waiting_deadline > max_deadline:
                    raise WorkflowFailed(self._failure(t, pod, "Backoff would exceed max duration limit"))
                if limit is not None and n <= limit:
                    self.clock.now = max(self.clock.now, waiting_deadline)  # requeued until the backoff ends
                execution_deadline = max_deadline
            policy = retry.get("retryPolicy", "OnFailure")
            if (pod.phase == "Failed" and policy == "OnError") or (pod.phase == "Error" and policy == "OnFailure"):
                raise WorkflowFailed(self._failure(t, pod, pod.message))
            if limit is not None and n > limit:
                raise WorkflowFailed(self._failure(t, pod, "No more retries left"))
            if "expression" in retry:
                last = {"lastRetry.exitCode": str(pod.exit_code), "lastRetry.status": pod.phase,
                        "lastRetry.message": pod.message,
                        "lastRetry.duration": f"{pod.finished - pod.created:.0f}"}
                if not evaluate(retry["expression"], last.__getitem__):
                    raise WorkflowFailed(self._failure(t, pod, "retryStrategy.expression evaluated to false"))
            attempt += 1

    def _failure(self, t: dict[str, Any], pod: Pod, why: str) -> str:
        tail = pod.stderr_tail.strip().splitlines()[-1:]
        return f"template {t['name']} exited {pod.exit_code}: {why}" + (f" {tail}" if tail else "")

    def _deadlines(self, rendered: dict[str, Any], created: float, timeout: float | None,
                   node_start: float, execution_deadline: float | None) -> tuple[float | None, float | None]:
        """The pod's activeDeadlineSeconds (workflowpod.go, build: the template's, the workflow's
        remaining time, then the timeout's deadline) and the executor's ARGO_DEADLINE (workflowpod.go,
        getDeadline: the workflow's deadline unless on exit, or the earlier execution deadline)."""
        ads = float(rendered["activeDeadlineSeconds"]) if "activeDeadlineSeconds" in rendered else None
        if self.wf_deadline is not None and not self._on_exit:
            remaining = self.wf_deadline - created
            if remaining <= 0:
                raise WorkflowFailed(f"template {rendered['name']}: the workflow's deadline passed before it started")
            if ads is None or remaining < ads:
                ads = remaining
        if timeout is not None:
            deadline = node_start + timeout
            # `created - deadline < ads` holds whenever the deadline is ahead: it replaces ads.
            if ads is None or created - deadline < ads:
                ads = deadline - created
                if ads <= 1:
                    raise WorkflowFailed(f"template {rendered['name']} exceeded its deadline")
        argo_deadline = None if self._on_exit else self.wf_deadline
        if execution_deadline is not None and (argo_deadline is None or execution_deadline < argo_deadline):
            argo_deadline = execution_deadline
        return ads, argo_deadline

    def _attempt(self, t: dict[str, Any], rendered: dict[str, Any], inputs: dict[str, str], attempt: int,
                 timeout: float | None, execution_deadline: float | None,
                 pending_check: bool) -> tuple[Pod, dict[str, str]]:
        self._pod_seq += 1
        root = self.workdir / f"pod-{self._pod_seq:04d}-{t['name']}"
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

        created = self.clock.now  # the attempt node's StartedAt; the pod is created right away
        ads, argo_deadline = self._deadlines(rendered, created, timeout, created, execution_deadline)
        plan = self.cluster(PodRequest(t["name"], attempt, inputs, argv, created)) if self.cluster else None
        plan = plan or Attempt(run_s=None)
        pod = Pod(t["name"], argv, -1, attempt, inputs=inputs, created=created, deadline_s=ads)
        self.pods.append(pod)

        # Pending: the controller's timeout check (operator.go, executeTemplate ->
        # checkTemplateTimeouts: only on a pod node, see the module doc) and the workflow
        # deadline's sweep of Pending nodes (operator.go, "fail pending and suspended nodes").
        bound = created + plan.pending_s
        pending_ends = []
        if pending_check and timeout is not None:
            pending_ends.append((created + timeout, "timeout"))
        if self.wf_deadline is not None and not self._on_exit:
            pending_ends.append((self.wf_deadline, "Step exceeded its deadline"))
        for when, message in sorted(pending_ends):
            if when < bound:
                pod.phase, pod.message, pod.finished = "Failed", message, when
                self.clock.now = when
                return pod, {}
        pod.started = bound

        # Running: the first of its own end, a failure the cluster inflicts, the kubelet's
        # activeDeadlineSeconds (from the start on the node) and the executor's deadline
        # (executor.go, monitorDeadline: the wait container kills main, which gets SIGTERM).
        ends: list[tuple[float, str, str, int | None]] = []  # (time, phase, message, exit code)
        if ads is not None:
            ends.append((bound + ads, "Failed", DEADLINE_MESSAGE, SIGTERM_EXIT))
        if argo_deadline is not None:
            when = max(argo_deadline, bound)
            ends.append((when, "Failed", f"main: Error (exit code {SIGTERM_EXIT})", SIGTERM_EXIT))
        if plan.failure is not None:
            f = plan.failure
            ends.append((bound + (plan.fail_after_s or 0.0), f.phase, f.message, f.exit_code))
        outputs: dict[str, str] = {}
        if plan.run_s is None:  # the real command, given the time left before the first forced end
            limit = min((e[0] for e in ends), default=None)
            budget = None if limit is None else max(limit - bound, 0.001)
            began = time.monotonic()
            try:
                proc = subprocess.run(argv, cwd=self.cwd, env=env, capture_output=True, text=True, timeout=budget)
                natural = (bound + (time.monotonic() - began), proc.returncode, proc.stderr[-2000:])
            except subprocess.TimeoutExpired:
                natural = (math.inf, 0, "")
        else:
            natural = (bound + plan.run_s, plan.exit_code, "")
            for path, text in plan.files.items():
                local = Path(_map_path(path, mounts))
                local.parent.mkdir(parents=True, exist_ok=True)
                local.write_text(text)
        when, code, tail = natural
        forced = min(ends, default=None)
        if forced is not None and forced[0] < when:
            when, phase, message, exit_code = forced
            pod.exit_code = -1 if exit_code is None else exit_code
        else:
            phase = "Succeeded" if code == 0 else "Failed"
            message = "" if code == 0 else f"main: Error (exit code {code})"
            pod.exit_code = code
        pod.phase, pod.message, pod.finished, pod.stderr_tail = phase, message, when, tail
        self.clock.now = when
        if phase != "Succeeded":
            return pod, {}
        for p in t.get("outputs", {}).get("parameters", []):
            path = Path(_map_path(p["valueFrom"]["path"], mounts))
            if not path.is_file():
                raise WorkflowFailed(f"template {t['name']}: output {p['name']} file {p['valueFrom']['path']} missing")
            outputs[p["name"]] = path.read_text()
        return pod, outputs

    def _volume(self, name: str, root: Path) -> Path:
        vols = {v["name"]: v for v in self.spec.get("volumes", [])}
        if name not in vols:
            raise Unsupported(f"volumeMount {name}: no such volume in spec.volumes")
        v = vols[name]
        _only(v, {"name", "configMap", "emptyDir"}, f"volume {name}")
        target = root / "volumes" / name
        if "emptyDir" in v:
            target.mkdir(parents=True, exist_ok=True)
            return target
        _only(v["configMap"], {"name", "optional"}, f"volume {name} configMap")
        cm = self.render(v["configMap"]["name"], {})
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
