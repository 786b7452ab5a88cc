"""The seal cache: built and copied models live here, each published whole by a rename."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def cache_dir() -> Path:
    """Where built tiny models and models copied from s3:// live (SEAL_CACHE or ~/.cache/seal)."""
    return Path(os.environ.get("SEAL_CACHE", Path.home() / ".cache" / "seal"))


def publish(tmp: Path, out: Path, replace: bool) -> None:
    """Rename a finished temp folder into place. Without `replace`, a folder that a concurrent
    process published first wins (both built the same thing from the same seed)."""
    if replace and out.exists():
        shutil.rmtree(out)
    try:
        os.rename(tmp, out)
    except OSError:
        if not (out / "config.json").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def mkparent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.parent
