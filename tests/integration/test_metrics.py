"""Prometheus metrics: naming rules, /metrics serving, and a real Pushgateway scraped by a real
Prometheus (Debian's `prometheus-pushgateway` and `prometheus`, started here on loopback)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import tiny_overrides

from seal import metrics
from seal.errors import TransientError

FORBIDDEN_LABELS = {"candidate", "context", "k", "pod", "pod_name", "shard"}  # shard: grouping key only


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)
    if path is None:
        pytest.fail(f"`{name}` is not installed: apt-get install --no-install-recommends prometheus "
                    "prometheus-pushgateway (`make test-deps` does this)")
    return path


def _get(url: str, timeout: float = 2.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # loopback only
        return r.read().decode()


def _wait_http(url: str, proc: subprocess.Popen, log: Path, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[0]} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError):
            _get(url, timeout=1)
            return
        time.sleep(0.2)
    pytest.fail(f"{url} did not come up in {seconds:.0f}s: {log.read_text()[-2000:]}")


@contextlib.contextmanager
def _server(args: list[str], ready_url: str, log: Path) -> Iterator[None]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_http(ready_url, proc, log)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def pushgateway(tmp_path_factory) -> Iterator[str]:
    """URL of a fresh Pushgateway on a free loopback port."""
    binary = _binary("prometheus-pushgateway")
    port = _free_port()
    log = tmp_path_factory.mktemp("pushgateway") / "pushgateway.log"
    # Debian's build persists to a shared /var/lib file by default: keep this one in memory.
    args = [binary, f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="]
    with _server(args, f"http://127.0.0.1:{port}/-/ready", log):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def seal_run_port() -> int:
    """The port `seal run --metrics-port` serves on in the test below; Prometheus scrapes it."""
    return _free_port()


@pytest.fixture(scope="module")
def prometheus(pushgateway, seal_run_port, tmp_path_factory) -> Iterator[str]:
    """URL of a Prometheus scraping, every second, the Pushgateway (honor_labels, as the chart does)
    and the /metrics of a `seal run` (job seal-run)."""
    binary = _binary("prometheus")
    port = _free_port()
    work = tmp_path_factory.mktemp("prometheus")
    config = work / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: pushgateway\n"
        "    honor_labels: true\n"
        f"    static_configs: [{{targets: ['{urllib.parse.urlparse(pushgateway).netloc}']}}]\n"
        "  - job_name: seal-run\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{seal_run_port}']}}]\n"
    )
    args = [binary, f"--config.file={config}", f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
    with _server(args, f"http://127.0.0.1:{port}/-/ready", work / "prometheus.log"):
        yield f"http://127.0.0.1:{port}"


def _query(prom: str, expr: str, seconds: float = 30) -> list[dict]:
    """The instant-vector result of `expr`, polling until it is non-empty."""
    import json

    deadline = time.monotonic() + seconds
    while True:
        body = json.loads(_get(f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})))
        assert body["status"] == "success", body
        if body["data"]["result"] or time.monotonic() > deadline:
            return body["data"]["result"]
        time.sleep(0.5)


# --- naming rules (no servers)


def test_names_units_and_labels_follow_prometheus_conventions():
    families = list(metrics._define(metrics.CollectorRegistry()).__dict__.values())
    assert len(families) >= 12
    for m in families:
        name, kind, labels = m._name, m._type, set(m._labelnames)
        assert name.startswith("seal_"), name
        assert not name.endswith("_total"), name  # prometheus_client strips it and re-adds it on counters
        if "duration" in name or "timestamp" in name:
            assert name.endswith("_seconds"), name
        if "bytes" in name:
            assert name.endswith("_bytes") and kind == "counter", name  # exposed as seal_..._bytes_total
        assert not labels & FORBIDDEN_LABELS, (name, labels)
        assert labels <= {"task", "stage", "outcome", "direction", "backend"}, (name, labels)


def test_serve_exposes_seal_series(monkeypatch):
    monkeypatch.delenv(metrics.PUSHGATEWAY_ENV, raising=False)
    port = metrics.serve(_free_port(), addr="127.0.0.1")
    metrics.self_edits_sampled("knowledge", 2, 30)
    text = _get(f"http://127.0.0.1:{port}/metrics")
    assert 'seal_self_edits_sampled_total{task="knowledge"}' in text
    assert "seal_tokens_generated_total" in text


def test_bad_metrics_port_is_a_config_error():
    from seal.errors import ConfigError

    with pytest.raises(ConfigError, match="expected a TCP port"):
        metrics.serve("http")


# --- a real Pushgateway


def _fake_rt(run_id: str) -> SimpleNamespace:
    return SimpleNamespace(cfg=SimpleNamespace(run_id=run_id))


def test_failure_push_never_hides_the_last_success(pushgateway, monkeypatch):
    monkeypatch.setenv(metrics.PUSHGATEWAY_ENV, pushgateway)

    @metrics.stage("adapt", sharded=True)
    def ok(rt, round_, shard):
        metrics.inner_fits("knowledge", [0.5, 0.7], 0.25)
        return True

    @metrics.stage("adapt", sharded=True)
    def broken(rt, round_, shard):
        raise TransientError("store unreachable")

    ok(_fake_rt("hides"), 0, 3)
    with pytest.raises(TransientError):
        broken(_fake_rt("hides"), 0, 3)
    text = _get(f"{pushgateway}/metrics")
    group = 'round="0",run="hides",shard="3",stage="adapt"'
    success = [line for line in text.splitlines() if line.startswith("seal_stage_last_success_timestamp_seconds")
               and group in line]
    failure = [line for line in text.splitlines() if line.startswith("seal_stage_last_failure_timestamp_seconds")
               and group in line]
    assert success and failure, text
    assert 'outcome="transient"' in failure[0]
    assert any(line.startswith("seal_reward_count") and group in line for line in text.splitlines())
    assert not [line for line in text.splitlines() if line.startswith("seal_") and "_created{" in line]


def test_unreachable_pushgateway_only_warns(monkeypatch, caplog):
    monkeypatch.setenv(metrics.PUSHGATEWAY_ENV, f"http://127.0.0.1:{_free_port()}")

    @metrics.stage("plan")
    def plan(rt, round_):
        return {"contexts": []}

    assert plan(_fake_rt("nogw"), 0) == {"contexts": []}
    assert "could not push metrics" in caplog.text


@pytest.mark.slow
def test_local_round_pushes_reward_and_duration_series_to_prometheus(prometheus, pushgateway, seal_run_port,
                                                                     tmp_path):
    """`seal run --pushgateway URL --metrics-port P` on a tiny model for one round: Prometheus has
    the pushed series, and the run served its own /metrics while it worked."""
    overrides = [o for o in tiny_overrides(str(tmp_path / "runs"), "metrics") if not o.startswith("rounds=")]
    cmd = [sys.executable, "-m", "seal.cli", "run", "--pushgateway", pushgateway,
           "--metrics-port", str(seal_run_port), "--set", "rounds=1"]
    for o in overrides:
        cmd += ["--set", o]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    env.pop(metrics.PUSHGATEWAY_ENV, None)
    # Read the run's own /metrics while it works (polling: a Prometheus scrape of so short a run
    # may or may not land inside it, which made this test flaky on an idle machine).
    live = ""
    log = tmp_path / "seal-run.log"  # a file, not a pipe: a full pipe would stall the run we poll
    with open(log, "w") as out, subprocess.Popen(cmd, stdout=out, stderr=out, env=env) as proc:
        while proc.poll() is None and 'stage="sample"' not in live:
            try:
                live = _get(f"http://127.0.0.1:{seal_run_port}/metrics")
            except OSError:
                pass
            time.sleep(0.05)
        proc.wait(timeout=300)
    stderr = log.read_text()
    assert proc.returncode == 0, stderr[-3000:]
    assert "could not push" not in stderr
    served = [line for line in live.splitlines() if line.startswith("seal_stage_runs_total{")]
    assert any('stage="plan"' in line and 'outcome="success"' in line for line in served), live[-2000:]

    rewards = _query(prometheus, 'seal_reward_count{run="metrics",round="0",stage="adapt"}')
    assert rewards, "no seal_reward series in Prometheus"
    assert sum(float(r["value"][1]) for r in rewards) == 6  # 3 contexts x K=2, one sample per edit
    assert {r["metric"]["task"] for r in rewards} == {"knowledge"}
    assert {r["metric"]["job"] for r in rewards} == {"seal"}

    durations = _query(prometheus, 'seal_stage_duration_seconds_count{run="metrics",outcome="success"}')
    assert {r["metric"]["stage"] for r in durations} == {"plan", "sample", "adapt", "improve"}
    fits = _query(prometheus, 'sum(seal_inner_fits_total{run="metrics"})')
    assert float(fits[0]["value"][1]) == 6  # F=1 fit per edit
    sampled = _query(prometheus, 'sum(seal_self_edits_sampled_total{run="metrics"})')
    assert float(sampled[0]["value"][1]) == 6
    kept = _query(prometheus, 'seal_edits_kept_total{run="metrics",stage="improve"}')
    assert float(kept[0]["value"][1]) == 3  # top-1 per context, min_reward=-1
    written = _query(prometheus, 'sum(seal_store_bytes_total{run="metrics",direction="write",backend="file"})')
    assert float(written[0]["value"][1]) > 0
    success = _query(prometheus, 'seal_stage_last_success_timestamp_seconds{run="metrics",stage="improve"}')
    assert float(success[0]["value"][1]) > time.time() - 600



def test_init_and_finish_push_their_outcome(pushgateway, monkeypatch, tmp_path):
    from seal.cli import main

    monkeypatch.setenv(metrics.PUSHGATEWAY_ENV, pushgateway)
    run = str(tmp_path / "runs" / "bookkeeping")
    config = tmp_path / "c.yaml"
    config.write_text("rounds: 1\n")
    assert main(["init", "--run", run, "--config", str(config)]) == 0
    assert main(["finish", "--run", run, "--status", "Succeeded"]) == 0
    text = _get(f"{pushgateway}/metrics")
    for stage in ("init", "finish"):
        assert any(line.startswith("seal_stage_last_success_timestamp_seconds")
                   and f'run="bookkeeping",stage="{stage}"' in line for line in text.splitlines()), stage
