"""The house plan holds: no import circle in seal (imports inside functions counted), one inner
loop that the adapt stage and both evaluations call, and the design doc every reference points to."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "seal"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imports_of(path: Path) -> set[str]:
    """Every seal module `path` imports, at the top or inside a function."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("seal"))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("seal"):
            for a in node.names:  # `from seal.x import y`: y is a module, or a name in seal.x
                sub = f"{node.module}.{a.name}"
                out.add(sub if is_module(sub) else node.module)
    return out


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) - {module_name(p)} for p in PACKAGE.rglob("*.py")}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_in_seal():
    graph = import_graph()
    assert "seal.stages.adapt" in graph and "seal.inner.fit" in graph["seal.stages.adapt"]  # the graph is real
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_one_inner_loop():
    """The adapt stage and both evaluations reach seal.inner.fit.run_fits; nothing else in seal
    trains an inner-loop adapter (attach_lora: the sequential trainer and the M-step only; the CPT
    and continual evaluations' updates go through seal.inner.train.lora_update)."""
    graph = import_graph()
    assert "seal.inner.fit" in graph["seal.stages.adapt"]
    assert "seal.stages.adapt" in graph["seal.evaluation.arc"]
    assert "seal.inner.fit" in graph["seal.evaluation.world"]
    assert all("seal.inner.train" in graph[m] for m in ("seal.evaluation.cpt", "seal.evaluation.continual"))
    callers = {module_name(p) for p in PACKAGE.rglob("*.py") if "attach_lora(" in p.read_text()}
    assert callers == {"seal.inner.train", "seal.inner.fit", "seal.inner.multilora", "seal.stages.improve"}


def test_design_doc_is_in_the_repository():
    assert (ROOT / "docs" / "architecture.md").exists()
    out = subprocess.run(["grep", "-rn", "DESIGN" + ".md", "seal", "configs", "workflows", "tests"], cwd=ROOT,
                         capture_output=True, text=True)
    hits = [line for line in out.stdout.splitlines() if not line.startswith("tests/unit/test_layout.py")]
    assert hits == []


def test_every_subcommand_has_one_handler():
    from seal.cli import COMMANDS, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")  # argparse's subparsers action
    assert set(sub.choices) == set(COMMANDS)
