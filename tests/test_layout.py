"""The package layout: no import circle among the project's modules, no module past 450 lines.

Imports are read from the source (every `import`, at the top, inside functions and under
TYPE_CHECKING alike), so a circle that Python happens to resolve at run time is still caught.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cdcore", "jobs")
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _imported(name: str, path: Path) -> set[str]:
    """The project modules that module `name` imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    # A module imports its packages' __init__ too, but that is no edge of its own making.
    return {t for t in targets if t in MODULES and t != name and not name.startswith(t + ".")}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph`, as the list of modules around it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_reader_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle_in_the_project():
    graph = {name: _imported(name, path) for name, path in MODULES.items()}
    assert graph["cdcore.pipeline"] >= {"cdcore.streaming", "cdcore.tiling"}  # the reader sees imports
    assert _cycle(graph) is None


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_past_the_line_limit(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name].relative_to(ROOT)} has {lines} lines (at most {MAX_LINES})"


# cdcore's layers, lowest first, as its docstring lists them: a module imports only from its own
# layer and those below. The one exception resizes pictures with the tiled path's band-wise
# Lanczos, so that held and streamed images get the same pixels.
LAYERS = ("options", "timings", "results", "memory", "statusline", "io", "models", "transfer", "tiling",
          "streaming", "training", "batching", "pipeline", "cli")
UPWARD_ALLOWED = {("cdcore.io.images", "cdcore.tiling.buffers"), ("cdcore.io.images", "cdcore.tiling.resample")}


def _layer(name: str) -> int | None:
    parts = name.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_cdcore_module_has_a_layer():
    assert [name for name in MODULES if name.startswith("cdcore.") and _layer(name) is None] == []


def test_cdcore_imports_only_from_its_layer_and_below():
    upward = {(name, target) for name, path in MODULES.items() if name.startswith("cdcore.")
              for target in _imported(name, path) if target.startswith("cdcore.") and _layer(target) > _layer(name)}
    assert upward == UPWARD_ALLOWED
