"""The layers run one way (docs/design.md, "Layers"): ``detectors`` imports nothing of ``streams`` or
``retrain``, ``retrain`` nothing of ``streams``, and no module imports itself back through others.

Read from the source with :mod:`ast`, so imports inside functions count too, and nothing is executed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = ("detectors", "retrain", "streams")
MAY_IMPORT = {"detectors": set(), "retrain": {"detectors"}, "streams": {"detectors", "retrain"}}


def _modules() -> dict[str, Path]:
    return {f"{package}.{path.stem}" if path.stem != "__init__" else package: path
            for package in PACKAGES for path in sorted((Path(REPO) / package).glob("*.py"))}


def imports_of(path: Path, module: str) -> set[str]:
    """The project modules ``path`` imports (``from x import y`` counts as ``x.y`` when that is a module)."""
    known = _modules()
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: resolve against the importing package
                parent = module.rsplit(".", node.level)[0] if "." in module else module
                base = f"{parent}.{base}" if base else parent
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        found.update(name for name in names if name.split(".")[0] in PACKAGES)
    found.discard(module)
    return found


def graph() -> dict[str, set[str]]:
    return {module: imports_of(path, module) for module, path in _modules().items()}


@pytest.mark.parametrize("package", PACKAGES)
def test_a_package_imports_only_the_layers_below_it(package: str) -> None:
    wrong = {module: sorted(name for name in names if name.split(".")[0] not in MAY_IMPORT[package] | {package})
             for module, names in graph().items() if module.split(".")[0] == package}
    assert not {m: n for m, n in wrong.items() if n}, f"{package} may import only {sorted(MAY_IMPORT[package])}"


def package_graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {package: set() for package in PACKAGES}
    for module, names in graph().items():
        edges[module.split(".")[0]].update(name.split(".")[0] for name in names)
    return {package: targets - {package} for package, targets in edges.items()}


@pytest.mark.parametrize("level", ["module", "package"])
def test_no_import_cycle(level: str) -> None:
    edges = graph() if level == "module" else package_graph()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(edges.get(module, ())):
            if target not in edges:
                continue
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(target):] + [target]))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)


def test_the_checker_sees_imports_inside_functions() -> None:
    """The test above could not fail if it missed imports: retrain/worker.py imported streams inside
    a function, which is how the old cycle hid."""
    source = Path(REPO) / "streams" / "retrain_service.py"
    assert "streams.kafka" in imports_of(source, "streams.retrain_service")  # imported in from_config


def test_every_document_the_code_cites_is_in_the_repository() -> None:
    """Code comments point at ``docs/design.md`` (and README, BENCHMARKS); a cited ``*.md`` that is
    not in the repository is a pointer a new contributor cannot follow."""
    import re

    cited: set[str] = set()
    for package in ("detectors", "retrain", "streams", "bench", "tests"):
        for source in (Path(REPO) / package).rglob("*.py"):
            cited.update(re.findall(r"\b((?:docs/)?[A-Za-z_]+\.md)\b", source.read_text(encoding="utf-8")))
    assert "docs/design.md" in cited
    missing = sorted(name for name in cited if not (Path(REPO) / name).exists())
    assert not missing, f"cited but not in the repository: {missing}"
