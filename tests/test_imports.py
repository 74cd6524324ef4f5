"""The package's import graph: no cycles, and no run-time module imports the test builders."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "noise_diffusion"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (at module level or inside functions)."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(base + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                # `from pkg import sub` imports the submodule when there is one, else a name of pkg itself
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for child in graph[node]:
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in on_stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_run_time_modules_never_import_the_test_builders():
    offenders = {
        module: sorted(t for t in targets if t.startswith("noise_diffusion.testing"))
        for module, targets in import_graph().items()
        if not module.startswith("noise_diffusion.testing")
    }
    assert {m: t for m, t in offenders.items() if t} == {}


def test_plug_ins_are_imported_explicitly():
    """Registration goes through explicit imports: no module is imported by a name in a string."""
    dynamic = [
        str(path.relative_to(ROOT)) for path in PACKAGE.rglob("*.py")
        if "import_module(" in path.read_text(encoding="utf-8")
    ]
    assert dynamic == []


def test_run_time_modules_never_import_the_training_code():
    """Training the toy worlds is a separate tool: loading a shipped world must not pull it in."""
    training = "noise_diffusion.toy.training"
    offenders = {
        module: sorted(t for t in targets if t.startswith(training))
        for module, targets in import_graph().items()
        if not module.startswith(training)
    }
    assert {m: t for m, t in offenders.items() if t} == {}


def test_the_graph_sees_the_training_modules_imports():
    """The check above can fail: the graph does hold the training module's own imports of the world."""
    graph = import_graph()
    assert {"noise_diffusion.toy.models", "noise_diffusion.toy.world"} <= graph["noise_diffusion.toy.training.digits"]
