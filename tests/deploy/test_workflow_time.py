"""workflows/restem.yaml and workflows/eval-knowledge.yaml against the controller's time rules, on
a fake clock (tests/argo_local.py: deadlines, Pending, retries and backoff as Argo's workflowpod.go,
operator.go and executor.go apply them). Every pod is simulated: hours of cluster time run in
milliseconds, no process starts.

The first tests are the three ways a first real run failed before (issue 15): GPU pods killed
after the 2 h "pending" timeout, no retry 30 minutes after a pod's first start, evictions not
retried; those about one long GPU pod run on both workflows (restem's adapt, eval-knowledge's
shard). RESTEM_YAML=path and EVAL_YAML=path run them against other copies of the workflows (e.g.
older ones, to see them fail: `git show main~N:workflows/restem.yaml > /tmp/old.yaml`).
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from argo_local import DEADLINE_MESSAGE, SIGTERM_EXIT, Attempt, Failure, LocalArgo, PodRequest, Result

ROOT = Path(__file__).resolve().parents[2]
H, M = 3600.0, 60.0

# A round of the paper's scale in miniature: 2 sample pods, 3 adapt pods. Typical durations on a
# GPU: adapt pods run 3 h (176 candidates x 3 LoRA fits), sample and improve 1 h.
SAMPLE, ADAPT = ["0", "1"], ["0", "1", "2"]
RUN_S = {"init": 30.0, "plan": 60.0, "sample": 1 * H, "adapt": 3 * H, "improve": 1 * H, "finish": 10.0}
WAIT_FOR_GPU_S = 20 * M  # each GPU pod waits this long for a node


def restem() -> dict[str, Any]:
    path = os.environ.get("RESTEM_YAML") or ROOT / "workflows" / "restem.yaml"
    return yaml.safe_load(Path(path).read_text())


def cluster(special: dict[tuple[str, str, int], Attempt] | None = None, run_s: dict[str, float] | None = None):
    """Every pod succeeds after RUN_S (or `run_s`), GPU pods after waiting for a node, except the
    attempts in `special`, keyed (template, shard or "", attempt)."""
    special = special or {}
    durations = {**RUN_S, **(run_s or {})}

    def decide(req: PodRequest) -> Attempt:
        key = (req.template, req.inputs.get("shard", ""), req.attempt)
        if key in special:
            return special[key]
        files = {}
        if req.template == "plan":
            files = {"/tmp/seal-plan/sample.json": json.dumps(SAMPLE), "/tmp/seal-plan/adapt.json": json.dumps(ADAPT)}
        gpu = req.template in ("sample", "adapt", "improve")
        return Attempt(pending_s=WAIT_FOR_GPU_S if gpu else 0.0, run_s=durations[req.template], files=files)

    return decide


def run(special: dict[tuple[str, str, int], Attempt] | None = None, run_s: dict[str, float] | None = None) -> Result:
    params = {"store": "s3://bucket/runs", "run-id": "t", "rounds": "1"}
    return LocalArgo(restem(), params, secrets={"seal-s3": {}}, cluster=cluster(special, run_s)).run()


SHORT = {"adapt": 1 * H}  # pods short enough that no deadline of any version of restem.yaml is near


def attempts(result: Result, template: str, shard: str = "") -> list:
    return [p for p in result.pods if p.template == template and p.inputs.get("shard", "") == shard]


# eval-knowledge.yaml in miniature: plan, three shard pods (ranges of shards), join.
EVAL_SHARDS = ["0-3", "4-7", "8-9"]
EVAL_RUN_S = {"plan": 60.0, "shard": 3 * H, "join": 60.0}


def eval_knowledge() -> dict[str, Any]:
    path = os.environ.get("EVAL_YAML") or ROOT / "workflows" / "eval-knowledge.yaml"
    return yaml.safe_load(Path(path).read_text())


def run_eval(special: dict[tuple[str, str, int], Attempt] | None = None,
             run_s: dict[str, float] | None = None) -> Result:
    special, durations = special or {}, {**EVAL_RUN_S, **(run_s or {})}

    def decide(req: PodRequest) -> Attempt:
        key = (req.template, req.inputs.get("shard", ""), req.attempt)
        if key in special:
            return special[key]
        files = {"/tmp/seal-eval/shards.json": json.dumps(EVAL_SHARDS)} if req.template == "plan" else {}
        return Attempt(pending_s=WAIT_FOR_GPU_S if req.template == "shard" else 0.0,
                       run_s=durations[req.template], files=files)

    return LocalArgo(eval_knowledge(), {"out": "s3://bucket/evals/t"}, secrets={"seal-s3": {}},
                     cluster=decide).run()


@dataclass
class Flow:
    """A workflow's long GPU fan-out, for the tests that run on both: its template, items, run."""

    gpu: str
    items: list[str]
    run: Any
    last: str  # restem's exit handler (runs whatever happened), eval-knowledge's join (only after the shards)

    def long(self, special=None) -> Result:  # GPU pods of 1 h: no deadline of any version near
        return self.run(special, {self.gpu: 1 * H})


FLOWS = {"restem": Flow("adapt", ADAPT, run, "finish"), "eval-knowledge": Flow("shard", EVAL_SHARDS, run_eval, "join")}


@pytest.fixture(params=list(FLOWS))
def flow(request) -> Flow:
    return FLOWS[request.param]


def test_eval_knowledge_schedules_on_the_clock():
    res = run_eval()
    assert res.phase == "Succeeded", res.message
    assert [(p.template, p.inputs.get("shard", "")) for p in res.pods] == [
        ("plan", ""), ("shard", "0-3"), ("shard", "4-7"), ("shard", "8-9"), ("join", "")]
    assert res.finished == pytest.approx(60 + WAIT_FOR_GPU_S + 3 * H + 60)  # the shard pods side by side


def test_the_rounds_schedule_on_the_clock():
    res = run()
    assert res.phase == "Succeeded", res.message
    ran = [(p.template, p.inputs.get("shard", "")) for p in res.pods]
    assert ran == [("init", ""), ("plan", ""), ("sample", "0"), ("sample", "1"), ("adapt", "0"), ("adapt", "1"),
                   ("adapt", "2"), ("improve", ""), ("finish", "")]
    # the fan-outs run side by side: init, plan, then three GPU stages, each waiting for its node
    assert res.finished == pytest.approx(30 + 60 + 3 * WAIT_FOR_GPU_S + 1 * H + 3 * H + 1 * H + 10)


# --- 1. a GPU pod's deadline counts from its start on a node: hours of work are not cut at 2 h


def test_gpu_pods_run_their_hours_and_wait_for_a_node_as_long_as_it_takes(flow):
    slow_node = Attempt(pending_s=5 * H, run_s=10 * H)  # GPUs busy for 5 h, then 10 h of work
    item = flow.items[1]
    res = flow.run({(flow.gpu, item, 0): slow_node})
    for shard in flow.items:
        first = attempts(res, flow.gpu, shard)[0]
        ran = (first.finished - first.started) / H
        killed = f"{flow.gpu} {shard} killed after {ran:.1f} h on its node: {first.message}"
        assert first.message != DEADLINE_MESSAGE, killed
        assert first.exit_code == 0 and ran == (10 if shard == item else 3)
        assert first.deadline_s >= 12 * H  # the template's activeDeadlineSeconds, not a 2 h timeout
    assert attempts(res, flow.gpu, item)[0].started - attempts(res, flow.gpu, item)[0].created == 5 * H
    assert res.phase == "Succeeded", res.message


def test_a_pod_past_its_own_deadline_is_stopped_by_the_kubelet_and_resumes_on_a_retry(flow):
    """activeDeadlineSeconds (12 h for adapt and shard pods) counts from the start on a node; the
    kubelet's SIGTERM makes seal exit 75, so the retry runs the shards that are left."""
    item = flow.items[0]
    res = flow.run({(flow.gpu, item, 0): Attempt(pending_s=WAIT_FOR_GPU_S, run_s=13 * H),
                    (flow.gpu, item, 1): Attempt(run_s=1 * H)})
    assert res.phase == "Succeeded", res.message
    first, second = attempts(res, flow.gpu, item)
    assert first.message == DEADLINE_MESSAGE and first.exit_code == SIGTERM_EXIT
    assert first.finished - first.started == 12 * H
    assert second.created == first.finished + 1 * M and second.exit_code == 0  # backoff 1 min


# --- 2. retries are not cut off 30 minutes after the first attempt's start


def test_a_pod_preempted_after_an_hour_is_retried(flow):
    item = flow.items[1]
    res = flow.long({(flow.gpu, item, 0): Attempt(pending_s=WAIT_FOR_GPU_S, run_s=3 * H, fail_after_s=1 * H,
                                                  failure=Failure.preempted())})
    assert res.phase == "Succeeded", res.message
    first, second = attempts(res, flow.gpu, item)
    assert (first.phase, first.message, first.exit_code) == ("Error", "pod deleted", -1)
    assert second.exit_code == 0 and second.created == first.finished + 1 * M


def test_a_retry_may_run_longer_than_30_minutes(flow):
    """Attempt 0 hits a throttled store after 10 min (exit 75); attempt 1 needs its 3 hours."""
    item = flow.items[2]
    res = flow.long({(flow.gpu, item, 0): Attempt(run_s=10 * M, exit_code=75),
                     (flow.gpu, item, 1): Attempt(pending_s=WAIT_FOR_GPU_S, run_s=3 * H)})
    first, second = attempts(res, flow.gpu, item)
    assert first.exit_code == 75
    ran = (second.finished - second.started) / H
    assert second.exit_code == 0, f"the retry was stopped after {ran:.2f} h: {second.message}; {res.message}"
    assert ran == 3 and res.phase == "Succeeded", res.message


# --- 3. evictions, with the message the kubelet writes, are retried


@pytest.mark.parametrize("failure", [Failure.evicted("memory"), Failure.evicted("ephemeral-storage"),
                                     Failure.node_shutdown()], ids=["memory", "disk", "node-shutdown"])
def test_an_evicted_pod_is_retried(flow, failure):
    """Evicted 5 minutes into its first attempt (no deadline anywhere near): the retry decision is
    the expression's alone."""
    item = flow.items[0]
    res = flow.long({(flow.gpu, item, 0): Attempt(run_s=1 * H, fail_after_s=5 * M, failure=failure)})
    assert res.phase == "Succeeded", res.message
    first, second = attempts(res, flow.gpu, item)
    assert first.message == failure.message and second.exit_code == 0


# --- what is not retried


@pytest.mark.parametrize("attempt, reason", [
    (Attempt(run_s=1 * H, fail_after_s=10 * M, failure=Failure.oom_killed()), "main: OOMKilled"),
    (Attempt(run_s=5.0, exit_code=2), "exit code 2"),
    (Attempt(run_s=5.0, exit_code=65), "exit code 65"),
])
def test_oom_kills_and_bad_input_are_not_retried(flow, attempt, reason):
    """...and the rest stops: restem's exit handler still runs, eval-knowledge's join does not."""
    item = flow.items[1]
    res = flow.long({(flow.gpu, item, 0): attempt})
    assert res.phase == "Failed" and "retryStrategy.expression evaluated to false" in res.message
    assert len(attempts(res, flow.gpu, item)) == 1 and reason in attempts(res, flow.gpu, item)[0].message
    if flow.last == "finish":
        assert res.pods[-1].template == "finish" and res.pods[-1].exit_code == 0
    else:
        assert not attempts(res, flow.last)


def test_a_pod_failing_every_time_gives_up_after_the_retry_limit_with_growing_backoff():
    always = Attempt(run_s=1 * H, fail_after_s=1 * M, failure=Failure.evicted())
    res = run({("sample", "0", n): always for n in range(10)}, SHORT)
    tries = attempts(res, "sample", "0")
    assert res.phase == "Failed" and "No more retries left" in res.message and len(tries) == 5
    assert [b.created - a.finished for a, b in zip(tries, tries[1:], strict=False)] == [1 * M, 2 * M, 4 * M, 8 * M]


# --- the executor's own time rules, on small workflows (what restem.yaml no longer uses included)


def mini(template: dict[str, Any], wf_deadline: int | None = None, items: int = 1,
         parallelism: int | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"entrypoint": "main", "onExit": "exit", "templates": [
        {"name": "main", "dag": {"tasks": [{"name": "t", "template": "t", "withItems": list(range(items)),
                                            "arguments": {"parameters": [{"name": "i", "value": "{{item}}"}]}}]}},
        {"name": "t", "inputs": {"parameters": [{"name": "i"}]}, **template,
         "container": {"image": "x", "command": ["true"]}},
        {"name": "exit", "container": {"image": "x", "command": ["true"]}},
    ]}
    if parallelism:
        spec["templates"][0]["parallelism"] = parallelism
    if wf_deadline:
        spec["activeDeadlineSeconds"] = wf_deadline
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "metadata": {"name": "m"}, "spec": spec}


def sim(doc: dict[str, Any], plans: dict[tuple[str, int], Attempt]) -> Result:
    def decide(req: PodRequest) -> Attempt:
        return plans.get((req.inputs.get("i", req.template), req.attempt), Attempt(run_s=1.0))

    return LocalArgo(doc, cluster=decide).run()


RETRY = {"limit": "3", "retryPolicy": "Always", "backoff": {"duration": "1m", "factor": "2"}}


def test_timeout_without_retries_fails_a_pod_still_pending_at_the_deadline():
    res = sim(mini({"timeout": "2h"}), {("0", 0): Attempt(pending_s=3 * H, run_s=60)})
    pod = res.pods[0]
    assert res.phase == "Failed"
    assert (pod.phase, pod.message, pod.finished, pod.started) == ("Failed", "timeout", 2 * H, None)


def test_timeout_with_retries_never_fails_pending_but_becomes_the_running_deadline():
    """The pending check sees the Retry node (Running); the pod's activeDeadlineSeconds is the
    timeout's remaining time at creation, counted by the kubelet from the start on a node, and it
    replaces the template's own activeDeadlineSeconds, longer or shorter."""
    for ads in ("43200", "600"):
        t = {"timeout": "2h", "activeDeadlineSeconds": ads, "retryStrategy": {**RETRY, "limit": "0"}}
        res = sim(mini(t), {("0", 0): Attempt(pending_s=3 * H, run_s=5 * H)})
        pod = res.pods[0]
        assert pod.deadline_s == 2 * H and pod.started == 3 * H and pod.finished == 5 * H, ads
        assert pod.message == DEADLINE_MESSAGE and res.phase == "Failed"


def test_max_duration_counts_from_the_first_attempt_and_the_executor_enforces_it():
    t = {"retryStrategy": {**RETRY, "backoff": {**RETRY["backoff"], "maxDuration": "30m"}}}
    # a retry after 30 min: refused before the expression or the limit are looked at
    res = sim(mini(t), {("0", 0): Attempt(run_s=40 * M, exit_code=75)})
    assert res.phase == "Failed" and "Max duration limit exceeded" in res.message and len(res.pods) == 2
    # a backoff ending past it: refused
    res = sim(mini(t), {("0", 0): Attempt(run_s=29.5 * M, exit_code=75)})
    assert "Backoff would exceed max duration limit" in res.message
    # a second attempt: the wait container kills main at first start + 30 min
    res = sim(mini(t), {("0", 0): Attempt(run_s=5 * M, exit_code=75), ("0", 1): Attempt(run_s=1 * H)})
    second = res.pods[1]
    assert second.finished == 30 * M and second.exit_code == SIGTERM_EXIT and "max duration" in res.message.lower()


def test_the_workflow_deadline_caps_pods_fails_pending_ones_and_spares_the_exit_handler():
    res = sim(mini({"activeDeadlineSeconds": "36000"}, wf_deadline=7200), {("0", 0): Attempt(run_s=3 * H)})
    pod, exit_pod = res.pods
    assert pod.deadline_s == 7200 and pod.finished == 7200 and res.phase == "Failed"
    assert exit_pod.template == "exit" and exit_pod.deadline_s is None and exit_pod.exit_code == 0
    res = sim(mini({}, wf_deadline=7200), {("0", 0): Attempt(pending_s=3 * H)})
    assert res.pods[0].message == "Step exceeded its deadline" and res.pods[0].finished == 7200


def test_parallelism_queues_a_fan_out():
    res = sim(mini({}, items=5, parallelism=2), {(str(i), 0): Attempt(run_s=1 * H) for i in range(5)})
    starts = sorted(p.started for p in res.pods if p.template == "t")
    assert starts == [0, 0, 1 * H, 1 * H, 2 * H] and res.pods[-1].created == 3 * H


def test_retry_policy_on_error_does_not_retry_a_failed_pod():
    t = {"retryStrategy": {**RETRY, "retryPolicy": "OnError"}}
    res = sim(mini(t), {("0", 0): Attempt(run_s=5, exit_code=75)})
    assert res.phase == "Failed" and len([p for p in res.pods if p.template == "t"]) == 1
    res = sim(mini(t), {("0", 0): Attempt(run_s=60, fail_after_s=5, failure=Failure.preempted())})
    assert res.phase == "Succeeded" and len([p for p in res.pods if p.template == "t"]) == 2


def test_restem_yaml_has_no_field_the_time_model_ignores():
    """Every time field of restem.yaml is one the executor models (it refuses unknown ones)."""
    doc = copy.deepcopy(restem())
    LocalArgo(doc, {"store": "s3://b/r", "run-id": "t"})
    doc["spec"]["templates"][3]["retryStrategy"]["backoff"]["maxDurationSeconds"] = 5
    with pytest.raises(Exception, match="maxDurationSeconds"):
        LocalArgo(doc, {"store": "s3://b/r", "run-id": "t"})
