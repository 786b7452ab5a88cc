"""`seal submit` against stand-ins for what cannot run here: a local HTTP server playing the Argo
Server API, and a fake CustomObjectsApi for the Kubernetes path. Both record exactly what seal sends."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from seal.cli import main
from seal.cluster.workflow import load_workflow
from seal.config import load_config

CONFIG = str(Path(__file__).resolve().parents[2] / "configs/squad-qwen2.5-7b.yaml")
ARGS = [CONFIG, "--set", "store=s3://bucket/runs/", "--set", "run_id=r1", "--set", "rounds=3"]


class FakeArgoServer:
    """POST /api/v1/workflows/{namespace}: records the request, answers like the Argo Server."""

    def __init__(self, status: int = 200):
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if status == 200:
                    wf = body["workflow"]
                    reply = {**wf, "metadata": {**wf["metadata"], "name": wf["metadata"]["generateName"] + "ab12c"}}
                else:
                    reply = {"code": 7, "message": "workflows.argoproj.io is forbidden"}
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def argo():
    servers = []

    def start(status=200):
        servers.append(FakeArgoServer(status))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def params_of(wf: dict) -> dict:
    return {p["name"]: p.get("value") for p in wf["spec"]["arguments"]["parameters"]}


def test_submit_through_argo_server_sends_restem_with_the_runs_parameters(argo, capsys, monkeypatch):
    server = argo()
    monkeypatch.setenv("ARGO_TOKEN", "Bearer tok-123")
    code = main(["submit", *ARGS, "--argo-server", server.url, "--namespace", "ml",
                 "-p", "image=ghcr.io/me/seal:1", "-p", "adapt-gpus=1",
                 "-p", "adapt-node-selector={\"nvidia.com/gpu.product\": \"NVIDIA-H100-80GB-HBM3\"}"])
    assert code == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip() == "seal-restem-ab12c"
    [req] = server.requests
    assert req["path"] == "/api/v1/workflows/ml"
    assert req["headers"]["Authorization"] == "Bearer tok-123"
    wf = req["body"]["workflow"]
    params = params_of(wf)
    cfg = load_config(CONFIG, ["store=s3://bucket/runs/", "run_id=r1", "rounds=3"])
    assert json.loads(params.pop("config")) == cfg.model_dump(mode="json")
    defaults = params_of(load_workflow())
    defaults.pop("config")
    assert params == {**defaults, "store": "s3://bucket/runs", "run-id": "r1", "rounds": "3",
                      "sample-shard-size": "10", "adapt-shard-size": "16", "image": "ghcr.io/me/seal:1",
                      "adapt-gpus": "1", "adapt-node-selector": '{"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}'}
    # everything but the parameter values is restem.yaml itself
    sent, original = json.loads(json.dumps(wf)), load_workflow()
    for p in (sent, original):
        p["spec"]["arguments"] = None
    assert sent == original


def test_argo_server_errors_end_in_one_line_with_the_right_exit_code(argo, capsys, monkeypatch):
    monkeypatch.delenv("ARGO_TOKEN", raising=False)
    for status, code, needle in [(403, 2, "refused the credentials"), (400, 2, "rejected the workflow"),
                                 (503, 75, "unavailable")]:
        server = argo(status)
        assert main(["submit", *ARGS, "--argo-server", server.url]) == code
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("seal: error:") and needle in err[0], err
        assert "Authorization" not in server.requests[0]["headers"]
    assert main(["submit", *ARGS, "--argo-server", "http://127.0.0.1:9"]) == 75  # nothing listens there
    assert "unreachable" in capsys.readouterr().err


class FakeCustomObjects:
    created: list[tuple] = []

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self.created.append((group, version, namespace, plural, body))
        return {**body, "metadata": {**body["metadata"], "name": "seal-restem-k8s01"}}


def test_submit_without_argo_server_creates_the_workflow_resource(monkeypatch, capsys):
    import kubernetes

    monkeypatch.delenv("ARGO_SERVER", raising=False)
    loaded = []
    monkeypatch.setattr(kubernetes.config, "load_kube_config", lambda *a, **k: loaded.append("kubeconfig"))
    monkeypatch.setattr(kubernetes.client, "CustomObjectsApi", FakeCustomObjects)
    FakeCustomObjects.created = []
    assert main(["submit", *ARGS, "--namespace", "team-a"]) == 0
    assert capsys.readouterr().out.strip() == "seal-restem-k8s01" and loaded == ["kubeconfig"]
    [(group, version, namespace, plural, body)] = FakeCustomObjects.created
    assert (group, version, namespace, plural) == ("argoproj.io", "v1alpha1", "team-a", "workflows")
    assert body["kind"] == "Workflow" and body["metadata"]["generateName"] == "seal-restem-"
    assert params_of(body)["run-id"] == "r1" and params_of(body)["rounds"] == "3"


def test_submit_without_any_cluster_config_is_a_usage_error(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("ARGO_SERVER", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["submit", *ARGS]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no Kubernetes config" in err[0]


@pytest.mark.parametrize("extra, needle", [
    (["--set", "store=.seal/runs"], "not reachable from pods"),
    (["-p", "imgae=x"], "-p imgae: not a parameter"),
    (["-p", "rounds=5"], "comes from the config"),
    (["-p", "sample-node-selector=gpu=h100"], "podSpecPatch is not JSON"),
    (["-p", "novalue"], "expected NAME=VALUE"),
    (["--set", "inner.rnak=3"], "inner.rnak"),
    (["-p", "adapt-gpus=2"], "one GPU"),  # nothing in seal would use a second one
    (["--model-cache-claim", "Bad_Name"], "--model-cache-claim"),
])
def test_bad_submit_input_is_refused_before_contacting_anything(argo, capsys, extra, needle):
    server = argo()
    assert main(["submit", *ARGS, *extra, "--argo-server", server.url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert server.requests == []


def test_submit_print_writes_the_checked_workflow_without_contacting_anything(argo, capsys):
    import yaml

    server = argo()
    assert main(["submit", *ARGS, "--print", "--argo-server", server.url, "-p", "image=img:1"]) == 0
    wf = yaml.safe_load(capsys.readouterr().out)
    assert server.requests == []
    assert wf["kind"] == "Workflow" and params_of(wf)["image"] == "img:1" and params_of(wf)["run-id"] == "r1"
    assert json.loads(params_of(wf)["config"])["rounds"] == 3


def test_submit_mounts_a_model_cache_claim_at_cache_in_every_pod(argo, capsys):
    import yaml

    assert main(["submit", *ARGS, "--print", "--model-cache-claim", "seal-model-cache"]) == 0
    wf = yaml.safe_load(capsys.readouterr().out)
    volumes = {v["name"]: v for v in wf["spec"]["volumes"]}
    assert volumes["seal-cache"] == {"name": "seal-cache", "persistentVolumeClaim": {"claimName": "seal-model-cache"}}
    for t in wf["spec"]["templates"]:
        if "container" in t:
            assert {"name": "seal-cache", "mountPath": "/cache"} in t["container"]["volumeMounts"]
