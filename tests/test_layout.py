"""How the package is laid out: its modules import one another without a cycle, and import off Unix too."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import hf_tl

PACKAGE = Path(hf_tl.__file__).parent
UNIX_ONLY = {"fcntl", "termios", "pwd", "grp", "resource"}  # modules Windows lacks


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name; a package by its own name."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported_names(path: Path) -> set[str]:
    """Every dotted name a module imports, at module level or inside a function; `from a import b` gives `a.b`.
    Imports under `if TYPE_CHECKING:` are for annotations only and never run: they are left out."""
    names = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        for inner in ast.walk(node)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package upwards
                package = ".".join(_name_of(path).split(".")[: -node.level])
                base = f"{package}.{base}".rstrip(".")
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _name_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts) if parts[-1] != "__init__" else ".".join(parts[:-1]) + ".__init__"


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (a name inside a module counts as that module)."""
    known = modules()

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in known.items():
        targets = {resolve(name) for name in imported_names(path) if name.split(".")[0] == PACKAGE.name}
        graph[module] = {t for t in targets if t and t != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules, the first repeated at the end), or None: a depth-first search."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once fully explored
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_no_import_cycles():
    """A cycle (features -> trainer -> features was one) makes import order matter and the parts inseparable."""
    graph = import_graph()
    assert "hf_tl.training.cache.features" in graph and graph["hf_tl.training.run"]  # the scan sees the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_find_cycle_finds_one_through_a_function_level_import(tmp_path):
    """The check itself: an import inside a function closes a cycle as well as one at the top."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    source = tmp_path / "m.py"
    source.write_text("import os\n\ndef f():\n    from hf_tl.training import trainer\n")
    assert imported_names(source) == {"os", "hf_tl.training.trainer"}


def test_no_module_imports_a_unix_only_module():
    """Importing must work on any OS: file locks go through filelock, not fcntl."""
    found = {
        module: sorted(names & UNIX_ONLY)
        for module, path in modules().items()
        if (names := {name.split(".")[0] for name in imported_names(path)}) & UNIX_ONLY
    }
    assert not found


@pytest.mark.parametrize("unix", [True, False])
def test_a_second_sweep_in_the_same_folder_is_refused_on_any_os(tmp_path, unix):
    """The sweep's lock, also as on Windows (no fcntl): a second sweep is refused, and the folder freed after."""
    code = f"""
import sys
if not {unix}:
    sys.modules["fcntl"] = None  # as off Unix: importing it fails
from pathlib import Path
from hf_tl.errors import HfTlError
from hf_tl.studies.sweep import locked

root = Path({str(tmp_path)!r})
with locked(root):
    try:
        with locked(root):
            raise SystemExit("a second sweep took the folder")
    except HfTlError as e:
        assert "another sweep is running in" in str(e), e
with locked(root):  # released: the next sweep runs
    pass
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_the_wheel_lists_every_package_of_hf_tl():
    """pyproject.toml lists the packages (recipes/ and model_cards/ ship as mapped data packages, which setuptools
    cannot add to found ones): every folder of hf_tl/ with an __init__.py must be on the list, or the wheel
    leaves it out (as it once left hf_tl/analysis/ out)."""
    from setuptools import find_packages

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    listed = set(tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set(find_packages(str(PACKAGE.parent), include=["hf_tl", "hf_tl.*"]))
    assert found - listed == set() and listed - found == {"hf_tl._recipes", "hf_tl._model_cards"}
