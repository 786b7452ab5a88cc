"""`make test-deps` (tests/install_test_deps.sh): nothing to do when the programs are there; for a
user who can neither be root nor sudo, one line naming what to install and a failing exit."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "install_test_deps.sh"


def run(tmp_path: Path, deps: str, uid: str = "1000") -> subprocess.CompletedProcess:
    shim = tmp_path / "bin"
    shim.mkdir(exist_ok=True)
    (shim / "id").write_text(f"#!/bin/sh\necho {uid}\n")  # fault injection: not root
    (shim / "id").chmod(0o755)
    for tool in ("bash", "sh", "env"):
        shutil.copy(shutil.which(tool), shim / tool)  # a PATH without sudo or apt-get
    env = {"PATH": str(shim), "SEAL_TEST_DEPS": deps, "HOME": str(tmp_path)}
    return subprocess.run([str(shim / "bash"), str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


def test_present_programs_need_nothing(tmp_path):
    proc = run(tmp_path, "bash env")
    assert proc.returncode == 0 and proc.stdout == proc.stderr == ""


def test_without_root_or_sudo_it_says_in_one_line_what_to_install(tmp_path):
    proc = run(tmp_path, "bash no-such-program-x")
    assert proc.returncode == 1 and proc.stdout == ""
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("make test: the tests need no-such-program-x")
    assert "apt-get install --no-install-recommends no-such-program-x" in line
