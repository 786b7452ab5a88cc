"""Run `seal` as a user would, in a subprocess under resource limits, and check how it refuses.

Every hostile case runs the real command line in a child process whose address space
(RLIMIT_AS) and CPU time (RLIMIT_CPU) are capped, so a case that tries to plan a billion
candidates or tokenize a huge passage dies by the limit instead of passing; and it checks the
whole promise: the exit code, exactly one `seal: error:` line, last, naming the input, and no
traceback.
"""

from __future__ import annotations

import hashlib
import os
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MEM_LIMIT = 3 << 30  # address space: the CLI with torch and a tiny model needs about 1.5 GiB
CPU_LIMIT_S = 120  # CPU seconds: far above any case here (each takes a few)

MAIN = "import sys; from seal.cli import main; sys.exit(main())"

# Fault injection for local I/O (the only mock in this suite): SEAL_FAULTS="op:path-part:errno,..."
# makes os.replace (op "write": every FileStore write ends with it) or Path.read_bytes (op "read")
# raise that errno for paths containing path-part, then runs the real CLI.
FAULTS = """
import errno, os, pathlib, sys
_faults = [f.split(":") for f in os.environ["SEAL_FAULTS"].split(",")]
def _hit(op, path):
    for o, part, err in _faults:
        if o == op and part in str(path):
            raise OSError(getattr(errno, err), os.strerror(getattr(errno, err)), str(path))
_replace, _read = os.replace, pathlib.Path.read_bytes
def replace(src, dst, *a, **k):
    _hit("write", dst)
    return _replace(src, dst, *a, **k)
def read_bytes(self):
    _hit("read", self)
    return _read(self)
os.replace, pathlib.Path.read_bytes = replace, read_bytes
""" + MAIN


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def error(self) -> str:
        return next((line for line in self.stderr.splitlines() if line.startswith("seal: error:")), "")


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEM_LIMIT, MEM_LIMIT))
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_LIMIT_S, CPU_LIMIT_S))


def seal(*args: str, env: dict[str, str] | None = None, faults: str | None = None, cwd: str | Path | None = None,
         timeout: float = 600) -> Result:
    """`seal ARGS` in a child process under MEM_LIMIT and CPU_LIMIT_S. `timeout` only keeps a hung
    child from hanging the suite (the frozen-server case uses it as the documented deadline)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                "SEAL_METRICS_PORT": "", "SEAL_PUSHGATEWAY": "", **(env or {})}
    if faults:
        full_env["SEAL_FAULTS"] = faults
    proc = subprocess.run([sys.executable, "-c", FAULTS if faults else MAIN, *args], capture_output=True,
                          text=True, env=full_env, cwd=cwd, preexec_fn=_limits, timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def assert_refused(res: Result, code: int, *names: str) -> str:
    """Exit `code`, one `seal: error:` line (the last line of stderr) naming each of `names`, no
    traceback. Returns the error line."""
    lines = res.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("seal: error:")]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert res.returncode == code, f"exit {res.returncode}, wanted {code}: {res.stderr[-2000:]}"
    assert len(errors) == 1 and lines[-1] == errors[0], res.stderr[-2000:]
    for name in names:
        assert name in errors[0], f"{name!r} not in {errors[0]!r}"
    return errors[0]


def snapshot(root: str | Path, skip: tuple[str, ...] = ("run.json",)) -> dict[str, str]:
    """{relative path: SHA-256} of every file under root (run.json, whose status a command may
    update, left out): compare before and after to show nothing finished changed."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in skip}
