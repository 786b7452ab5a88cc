"""Every Prometheus metric seal exports, in one place.

Names follow Prometheus conventions: the `seal_` prefix, base units (seconds, bytes), `_total`
on counters, and only low-cardinality labels (stage, outcome, task, direction, backend): never a
candidate, context or pod id.

Two ways out, both off unless configured:

- **/metrics over HTTP** while a process works: `SEAL_METRICS_PORT=9108` (or `seal run
  --metrics-port 9108`). Long-running pods (sample, adapt) are scraped by a PodMonitor.
- **Pushgateway** at the end of every stage: `SEAL_PUSHGATEWAY=http://host:9091` (or `seal run
  --pushgateway URL`). Each stage pushes with *pushadd* under job `seal` and the grouping key
  {run, round, stage, shard} (shard only for the fan-out stages, else the shards of one round
  would overwrite each other). A success pushes the stage's work metrics, its duration and
  `seal_stage_last_success_timestamp_seconds`; a failure pushes only the `*_last_failure_*`
  families, so with pushadd (which replaces metric families by name, within one group) a failure
  never hides the last success. A push that fails logs one warning and never fails the stage.

Served metrics are cumulative for the process; pushed ones cover only the stage being pushed
(each stage records into a fresh registry as well), so `seal run`, which runs every stage in one
process, does not push round 0's counts again under round 1's group.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from seal.errors import ConfigError, DataError, NotFoundError, TransientError

log = logging.getLogger(__name__)

NAMESPACE = "seal"
PUSH_JOB = "seal"
PORT_ENV = "SEAL_METRICS_PORT"
PUSHGATEWAY_ENV = "SEAL_PUSHGATEWAY"

# Stage wall times run from a second (plan) to hours (a 7B M-step); tiny CPU runs sit below 1 s.
STAGE_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
# One inner-loop LoRA fit: about a second on a tiny CPU model, minutes on a 7B GPU model.
FIT_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# Rewards are accuracies or F1 scores in [0, 1].
REWARD_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def _define(registry: CollectorRegistry) -> SimpleNamespace:
    """Create every seal metric in `registry`; the one list of what seal exports."""
    kw: dict[str, Any] = {"namespace": NAMESPACE, "registry": registry}
    return SimpleNamespace(
        # --- sampling (E-step, first half)
        self_edits=Counter("self_edits_sampled_total", "Self-edits sampled from the policy.",
                           ["task"], **kw),
        tokens=Counter("tokens_generated_total", "Tokens generated in sampled self-edits.",
                       ["task"], **kw),
        # --- the inner loop (E-step, second half)
        fits=Counter("inner_fits_total", "Inner-loop LoRA fits run, one per (self-edit, fit).",
                     ["task"], **kw),
        fit_seconds=Histogram("inner_fit_duration_seconds", "Wall time of one inner-loop LoRA fit.",
                              ["task"], buckets=FIT_BUCKETS, **kw),
        reward=Histogram("reward", "Reward of a self-edit (mean over its fits), in [0, 1].",
                         ["task"], buckets=REWARD_BUCKETS, **kw),
        # --- the filter and M-step
        kept=Counter("edits_kept_total", "Self-edits kept by the ReSTEM filter for the M-step.",
                     ["task"], **kw),
        # --- stages
        stage_runs=Counter("stage_runs_total", "Stage runs by outcome (success, skipped: output "
                           "existed already, or an error class).", ["stage", "outcome"], **kw),
        stage_seconds=Histogram("stage_duration_seconds", "Wall time of one stage run.",
                                ["stage", "outcome"], buckets=STAGE_BUCKETS, **kw),
        last_success=Gauge("stage_last_success_timestamp_seconds",
                           "Unix time at which the stage last succeeded.", ["stage"], **kw),
        last_failure=Gauge("stage_last_failure_timestamp_seconds",
                           "Unix time at which the stage last failed.", ["stage", "outcome"], **kw),
        last_failure_seconds=Gauge("stage_last_failure_duration_seconds",
                                   "Wall time of the stage's last failed run.", ["stage", "outcome"],
                                   **kw),
        # --- the artifact store
        store_bytes=Counter("store_bytes_total", "Bytes read from or written to the artifact store.",
                            ["direction", "backend"], **kw),
        store_errors=Counter("store_errors_total", "Store operations that failed, by error class.",
                             ["backend", "outcome"], **kw),
    )


# Families a failed stage pushes; everything else is pushed on success only (see the docstring).
_FAILURE_FAMILIES = {"seal_stage_last_failure_timestamp_seconds", "seal_stage_last_failure_duration_seconds"}

REGISTRY = CollectorRegistry()  # the process's metrics, served on /metrics
_process = _define(REGISTRY)
_local = threading.local()  # .stage: the metric set of the stage now running in this thread


def _sets() -> list[SimpleNamespace]:
    current = getattr(_local, "stage", None)
    return [_process] if current is None else [_process, current]


def _each(name: str) -> Iterator[Any]:
    for s in _sets():
        yield getattr(s, name)


# --- recording: called at the few places that sample, fit, score, keep and touch the store


def self_edits_sampled(task: str, edits: int, tokens: int) -> None:
    for m in _each("self_edits"):
        m.labels(task).inc(edits)
    for m in _each("tokens"):
        m.labels(task).inc(tokens)


def inner_fits(task: str, seconds: list[float], reward: float) -> None:
    """One scored self-edit: the wall time of each of its fits and its (mean) reward."""
    for m in _each("fits"):
        m.labels(task).inc(len(seconds))
    for m in _each("fit_seconds"):
        for s in seconds:
            m.labels(task).observe(s)
    for m in _each("reward"):
        m.labels(task).observe(reward)


def edits_kept(task: str, n: int) -> None:
    for m in _each("kept"):
        m.labels(task).inc(n)


def _backend(uri: str) -> str:
    return "s3" if uri.startswith("s3://") else "file"


def store_bytes(uri: str, direction: str, n: int) -> None:
    """`direction` is 'read' or 'write'; `uri` names the store (its scheme is the backend label)."""
    for m in _each("store_bytes"):
        m.labels(direction, _backend(uri)).inc(n)


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, TransientError):
        return "transient"
    if isinstance(exc, DataError):
        return "bad_data"
    if isinstance(exc, ConfigError):
        return "config_error"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return "error"


def count_store_errors(backend: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a store's `_errors` context-manager factory: count each error it raises once.

    A missing key (NotFoundError) is an answer, not a failure, and is not counted.
    """

    def wrap(factory: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(factory)
        @contextlib.contextmanager
        def counted(*args: Any, **kwargs: Any) -> Iterator[None]:
            try:
                with factory(*args, **kwargs):
                    yield
            except NotFoundError:
                raise
            except Exception as e:
                if not getattr(e, "_seal_counted", False):  # nested _errors re-raise the same error
                    e._seal_counted = True  # type: ignore[attr-defined]
                    for m in _each("store_errors"):
                        m.labels(backend, _outcome(e)).inc()
                raise

        return counted

    return wrap


# --- stages


class _StageRun:
    outcome = "success"

    def skipped(self) -> None:
        self.outcome = "skipped"


@contextlib.contextmanager
def stage_run(name: str, group: dict[str, str]) -> Iterator[_StageRun]:
    """Time one stage run into the process's metrics and a fresh per-stage set, then push that set."""
    outer = getattr(_local, "stage", None)
    registry = CollectorRegistry()
    _local.stage = _define(registry)
    run = _StageRun()
    t0 = time.perf_counter()
    failure: BaseException | None = None
    try:
        yield run
    except BaseException as e:
        failure = e
        raise
    finally:
        seconds = time.perf_counter() - t0
        outcome = _outcome(failure) if failure is not None else run.outcome
        for m in _each("stage_runs"):
            m.labels(name, outcome).inc()
        for m in _each("stage_seconds"):
            m.labels(name, outcome).observe(seconds)
        if failure is None:
            for m in _each("last_success"):
                m.labels(name).set_to_current_time()
        else:
            for m in _each("last_failure"):
                m.labels(name, outcome).set_to_current_time()
            for m in _each("last_failure_seconds"):
                m.labels(name, outcome).set(seconds)
        _local.stage = outer
        push(registry, group, failed=failure is not None)


def _returned(result: Any, run: _StageRun) -> Any:
    if result is False:
        run.skipped()
    return result


def stage_call(name: str, group: dict[str, str], fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run `fn(*args, **kwargs)` as stage `name` (see `stage_run`); False means skipped."""
    with stage_run(name, group) as run:
        return _returned(fn(*args, **kwargs), run)


def stage(name: str, sharded: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a stage function `fn(rt, round_, [shard,] ...)`: time it, count its outcome, push.

    A stage that returns False did nothing (its output existed): outcome `skipped`.
    """

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(rt: Any, round_: int, *args: Any, **kwargs: Any) -> Any:
            group = {"run": rt.cfg.run_id, "round": str(round_), "stage": name}
            if sharded:
                group["shard"] = str(args[0] if args else kwargs["shard"])
            return stage_call(name, group, fn, rt, round_, *args, **kwargs)

        return timed

    return wrap


# --- out: /metrics and the Pushgateway


class _NonEmpty:
    """A registry view without empty families (a pushed empty family would still replace one)."""

    def __init__(self, registry: CollectorRegistry, failed: bool):
        self.registry, self.failed = registry, failed

    def collect(self) -> Iterator[Any]:
        for family in self.registry.collect():
            if not family.samples:
                continue
            # A failure pushes only failure families; a success everything but those.
            if (family.name in _FAILURE_FAMILIES) == self.failed:
                # `_created` samples (a counter's creation time) are noise in a pushed group.
                family.samples = [s for s in family.samples if not s.name.endswith("_created")]
                yield family


def push(registry: CollectorRegistry, group: dict[str, str], failed: bool = False) -> bool:
    """pushadd the stage's metrics to $SEAL_PUSHGATEWAY (if set); a failed push only logs."""
    gateway = os.environ.get(PUSHGATEWAY_ENV, "").strip()
    if not gateway:
        return False
    from prometheus_client import pushadd_to_gateway

    try:
        pushadd_to_gateway(gateway, job=PUSH_JOB, registry=_NonEmpty(registry, failed),  # type: ignore[arg-type]
                           grouping_key=group, timeout=5)
    except Exception as e:  # metrics must never fail the work they describe
        log.warning("could not push metrics to %s=%s (%s: %s); the stage itself is unaffected",
                    PUSHGATEWAY_ENV, gateway, type(e).__name__, " ".join(str(e).split())[:200])
        return False
    return True


_served: dict[int, Any] = {}


def serve(port: int | str | None = None, addr: str = "0.0.0.0") -> int | None:
    """Serve the process's metrics on http://addr:port/metrics (port from $SEAL_METRICS_PORT when
    None); returns the port, or None when no port is configured. Safe to call twice."""
    from prometheus_client import start_http_server

    text = str(port if port is not None else os.environ.get(PORT_ENV, "")).strip()
    if not text:
        return None
    try:
        number = int(text)
        if not 0 < number < 65536:
            raise ValueError
    except ValueError:
        raise ConfigError(f"{PORT_ENV}/--metrics-port {text!r}: expected a TCP port, 1-65535") from None
    if number in _served:
        return number
    try:
        _served[number] = start_http_server(number, addr=addr, registry=REGISTRY)
    except OSError as e:
        raise ConfigError(f"cannot serve metrics on port {number}: {e.strerror or e}") from None
    log.info("serving metrics on http://%s:%d/metrics", addr, number)
    return number
