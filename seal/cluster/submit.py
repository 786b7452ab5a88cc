"""The cluster-side commands' library: `seal submit`, `seal finish`, `seal plan --dry-run`, and the
fan-out lists `seal plan --out-dir` writes for Argo. Each function takes typed arguments and
returns what the CLI prints.

`seal submit` fills workflows/restem.yaml's parameters from a run config and creates the Workflow
through the Argo Server API (`argo-workflows` SDK) when a server URL is set, else as a custom
resource through the Kubernetes API (`kubernetes` client: kubeconfig, or in-cluster). Both SDKs
are imported inside the functions that use them (pip install 'seal[argo]').
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from seal.cluster import gpu_memory
from seal.cluster.workflow import (
    ETCD_LIMIT,
    dry_run_report,
    estimate_size,
    fanout_groups,
    load_workflow,
    max_pods_default,
    reference_errors,
    run_parameters,
    schema_errors,
    with_model_cache_claim,
    with_parameters,
)
from seal.config import RunConfig, apply_overrides, from_dict
from seal.errors import ConfigError, SealError, TransientError
from seal.stages.runs import RUN_JSON, set_status
from seal.store import open_store

log = logging.getLogger(__name__)

ARGO_STATUS = {"Succeeded": "succeeded", "Failed": "failed", "Error": "failed"}


def inline_config(text: str, overrides: list[str]) -> RunConfig:
    """A config passed as one line of JSON (`seal init --config '{...}'`, as `seal submit` sends it)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--config: inline JSON config is not valid JSON ({e.msg} at character {e.pos})") from None
    except (RecursionError, ValueError):  # nested too deeply, a number over 4300 digits
        raise ConfigError("--config: inline JSON config is nested too deeply or holds a bad number") from None
    if not isinstance(data, dict):
        raise ConfigError("--config: an inline JSON config must be an object of keys to values")
    return from_dict(apply_overrides(data, overrides))


def write_fanout(plan: dict[str, Any], out_dir: str, max_pods: int | None) -> dict[str, list[str]]:
    """sample.json and adapt.json: the items Argo's withParam fans out over, one per pod."""
    if max_pods is not None and max_pods < 1:
        raise ConfigError(f"--max-pods {max_pods}: must be at least 1")
    lists = {
        "sample": fanout_groups(len(plan["sample_shards"]), max_pods),
        "adapt": fanout_groups(len(plan["adapt_shards"]), max_pods),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, items in lists.items():
        (out / f"{name}.json").write_text(json.dumps(items, separators=(",", ":")))
    return lists


# --- seal finish


def finish(run_uri: str, argo_status: str) -> str:
    """Record a workflow's outcome in run.json; returns what to print."""
    if argo_status not in ARGO_STATUS:
        raise ConfigError(f"--status {argo_status}: expected one of {', '.join(ARGO_STATUS)} (Argo's workflow.status)")
    run = open_store(run_uri)
    if not run.exists(RUN_JSON):
        # init never ran (or failed): there is no run to record a status in, and failing the exit
        # handler too would only hide the first error.
        return f"{run_uri}: no run.json, nothing to record (the workflow ended {argo_status})"
    message = "" if argo_status == "Succeeded" else f"Argo workflow ended {argo_status}"
    set_status(run, ARGO_STATUS[argo_status], message)
    return f"{run_uri}: {ARGO_STATUS[argo_status]}"


# --- seal plan --dry-run


def dry_run(cfg: RunConfig, source: str, workflow: str | None, max_pods: int | None, gpu: str | None = None,
            row_tokens: int | None = None) -> str:
    """`seal plan --dry-run`: pods per stage and the workflow object's estimated size, and with
    `gpu` a GPU pod's memory on that GPU type and the types the config fits, as text."""
    doc = load_workflow(workflow)
    text, _ = dry_run_report(cfg, doc, source, max_pods if max_pods is not None else max_pods_default(doc))
    if gpu:
        text += "\n" + gpu_memory.report(cfg, gpu, row_tokens)
    return text


# --- seal submit


def parse_parameters(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"-p {item}: expected NAME=VALUE, e.g. -p image=ghcr.io/you/seal:0.1.0")
        out[name] = value
    return out


def build_workflow(cfg: RunConfig, doc: dict[str, Any], extra: dict[str, str],
                   model_cache_claim: str | None = None) -> dict[str, Any]:
    """restem.yaml (or another workflow taking a config, e.g. eval-knowledge.yaml) with this run's
    parameters (and /cache on a claim, if given), checked the way the cluster would check it, and
    for restem.yaml refused when its final size could pass etcd's limit."""
    params = run_parameters(cfg, doc, extra)
    wf = with_parameters(with_model_cache_claim(doc, model_cache_claim) if model_cache_claim else doc, params)
    values = {p["name"]: p.get("value") for p in wf["spec"]["arguments"]["parameters"]}
    for t in wf["spec"]["templates"]:
        if "podSpecPatch" in t:
            patch = t["podSpecPatch"]
            for name, value in values.items():
                patch = patch.replace(f"{{{{workflow.parameters.{name}}}}}", value or "")
            try:
                json.loads(patch)
            except json.JSONDecodeError:
                raise ConfigError(f"template {t['name']}: its podSpecPatch is not JSON with these parameters: "
                                  "node selectors must be JSON objects and gpu-tolerations a JSON list") from None
    problems = schema_errors(wf) + reference_errors(wf)
    if problems:
        raise ConfigError(f"the workflow file does not validate: {problems[0]}")
    if "max-pods-per-stage" not in values:
        # Not restem.yaml's rounds (workflows/eval-knowledge.yaml: its max-pods caps its one fan-out),
        # so restem's size estimate does not apply.
        return wf
    max_pods = int(params.get("max-pods-per-stage") or max_pods_default(doc) or 0) or None
    size = estimate_size(cfg, doc, max_pods)["total"]
    if size > ETCD_LIMIT:
        raise ConfigError(f"this run's workflow object would reach ~{size // 1024} KB, past etcd's ~1 MB: "
                          "lower -p max-pods-per-stage or raise shards.* sizes (see seal plan --dry-run)")
    return wf


def submit(cfg: RunConfig, workflow: str | None, parameters: list[str], argo_server: str | None,
           namespace: str, print_only: bool = False, model_cache_claim: str | None = None) -> str:
    """Fill the workflow for `cfg` and create it (Argo Server when a URL is given, else the
    Kubernetes API); returns the workflow's name, or with `print_only` the filled-in YAML."""
    wf = build_workflow(cfg, load_workflow(workflow), parse_parameters(parameters), model_cache_claim)
    if print_only:
        import yaml

        return yaml.safe_dump(wf, sort_keys=False, width=1000)
    if argo_server:
        return submit_argo_server(wf, argo_server, namespace, os.environ.get("ARGO_TOKEN", ""))
    return submit_kubernetes(wf, namespace)


def _http_error(status: int | None, body: str, where: str) -> SealError:
    detail = body.strip().replace("\n", " ")[:300]
    try:
        detail = json.loads(body).get("message", detail)
    except (ValueError, AttributeError):
        pass
    if status in (401, 403):
        return ConfigError(f"{where} refused the credentials ({status}): check the token / service account ({detail})")
    if status is None or status == 429 or status >= 500:
        return TransientError(f"{where} is unavailable ({status or 'no response'}): retry later ({detail})")
    return ConfigError(f"{where} rejected the workflow ({status}): {detail}")


def submit_argo_server(wf: dict[str, Any], url: str, namespace: str, token: str) -> str:
    """POST /api/v1/workflows/{namespace} through the argo-workflows SDK; returns the name."""
    try:
        import argo_workflows
        import urllib3
        from argo_workflows.api.workflow_service_api import WorkflowServiceApi
        from argo_workflows.model.io_argoproj_workflow_v1alpha1_workflow_create_request import (
            IoArgoprojWorkflowV1alpha1WorkflowCreateRequest as CreateRequest,
        )
    except ImportError:
        raise ConfigError("submitting to an Argo Server needs argo-workflows: pip install 'seal[argo]'") from None
    conf = argo_workflows.Configuration(host=url.rstrip("/"))
    conf.verify_ssl = os.environ.get("ARGO_INSECURE_SKIP_VERIFY", "").lower() not in ("1", "true", "yes")
    headers = {}
    if token:
        headers = {"header_name": "Authorization",
                   "header_value": token if token.startswith("Bearer ") else f"Bearer {token}"}
    where = f"Argo Server {url}"
    with argo_workflows.ApiClient(conf, **headers) as client:
        try:
            # The workflow goes as a plain dict and the answer comes back as raw JSON: the SDK's
            # generated models would re-type (and could reject) fields that the server accepts.
            resp = WorkflowServiceApi(client).create_workflow(
                namespace, CreateRequest(workflow=wf, _check_type=False), _check_return_type=False,
                _preload_content=False, _request_timeout=60)
        except argo_workflows.ApiException as e:
            raise _http_error(e.status, e.body or "", where) from None
        except urllib3.exceptions.HTTPError as e:  # refused, timed out, DNS: the server is down or unreachable
            raise TransientError(f"{where} is unreachable ({type(e).__name__}): check the URL, retry later") from None
        body = json.loads(resp.data)
    return body["metadata"]["name"]


def submit_kubernetes(wf: dict[str, Any], namespace: str) -> str:
    """Create the Workflow custom resource (argoproj.io/v1alpha1, workflows); returns the name."""
    try:
        from kubernetes import client, config
        from kubernetes.client.exceptions import ApiException
    except ImportError:
        raise ConfigError("submitting through Kubernetes needs its client: pip install 'seal[argo]'") from None
    try:
        config.load_kube_config()
    except (config.ConfigException, FileNotFoundError, TypeError):
        try:
            config.load_incluster_config()
        except config.ConfigException:
            raise ConfigError("no Argo Server (--argo-server / $ARGO_SERVER) and no Kubernetes config "
                              "(~/.kube/config, $KUBECONFIG or in-cluster): set one") from None
    try:
        created = client.CustomObjectsApi().create_namespaced_custom_object(
            "argoproj.io", "v1alpha1", namespace, "workflows", wf)
    except ApiException as e:
        raise _http_error(e.status, e.body or "", "the Kubernetes API") from None
    except Exception as e:
        raise TransientError(f"the Kubernetes API is unreachable ({type(e).__name__}): retry later") from None
    return created["metadata"]["name"]
