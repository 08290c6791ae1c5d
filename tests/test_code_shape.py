"""The code's shape: no function over 100 lines, and no import cycle among the project's modules
(imports under `if TYPE_CHECKING:` and inside functions included), read from the source with ast."""

from __future__ import annotations

import ast
import graphlib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("service", "training")
MAX_FUNCTION_LINES = 100


def modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join(parts), path


def long_functions(path: Path) -> Iterator[tuple[str, int]]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno is not None
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                yield node.name, lines


def imported(module: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `module` imports, anywhere in its file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from a import b` imports the module a.b when there is one, else a name of a.
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        found.update(name for name in names if name in known and name != module)
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_no_function_over_100_lines(package: str) -> None:
    offenders = {
        f"{path.relative_to(ROOT).as_posix()}:{name}": lines
        for module, path in modules()
        if module.split(".")[0] == package
        for name, lines in long_functions(path)
    }
    assert not offenders, f"functions over {MAX_FUNCTION_LINES} lines: {offenders}"


def test_no_import_cycle() -> None:
    paths = dict(modules())
    graph = {module: imported(module, path, set(paths)) for module, path in paths.items()}
    assert graph["service.app"], "the import graph found nothing: the test is broken"
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def test_the_checks_find_what_they_look_for(tmp_path: Path) -> None:
    source = "def long():\n" + "    x = 1\n" * 120 + "\n\ndef short():\n    return 1\n"
    (tmp_path / "m.py").write_text(source)
    assert list(long_functions(tmp_path / "m.py")) == [("long", 121)]
    (tmp_path / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import b\n"
    )
    known = {"pkg.a", "pkg.b"}
    assert imported("pkg.a", tmp_path / "a.py", known) == {"pkg.b"}
    graph = {"pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}}
    with pytest.raises(graphlib.CycleError):
        tuple(graphlib.TopologicalSorter(graph).static_order())
