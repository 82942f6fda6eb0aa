"""The v2 layout: a mechanism module a learner reads in one sitting, layers that point one way.

``labsupport/<pattern>.py`` holds the mechanism only (at most 400 lines); its checks,
figures, services and benchmark live in ``checks/``, ``explore/``, ``services/`` and
``bench/``, which may use the mechanism but never the other way round.
"""

import ast
from pathlib import Path

import pytest

from labsupport import exercises

PACKAGE = Path(__file__).resolve().parents[1] / "labsupport"
LAYERS = ("checks", "explore", "services", "bench", "solutions")
PATTERNS = [e.module for e in exercises.COURSE]
MECHANISM_MAX_LINES = 400
ANY_FILE_MAX_LINES = 600


def imported_modules(source: str, package: str) -> set[str]:
    """Every module ``source`` (a module of ``package``) imports, as absolute names."""
    tree = ast.parse(source)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}".rstrip(".")
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return found


@pytest.mark.parametrize("pattern", PATTERNS)
def test_mechanism_module_is_short_and_imports_no_layer(pattern):
    path = PACKAGE / f"{pattern}.py"
    lines = len(path.read_text().splitlines())
    assert lines <= MECHANISM_MAX_LINES, f"{path.name}: {lines} lines"
    bad = sorted(m for m in imported_modules(path.read_text(), "labsupport")
                 if any(m == f"labsupport.{layer}" or m.startswith(f"labsupport.{layer}.")
                        for layer in LAYERS))
    assert not bad, f"{path.name} imports {bad}: the mechanism must not use its layers"


@pytest.mark.parametrize("pattern", PATTERNS)
def test_every_pattern_has_its_checks_explore_bench_and_solution_layers(pattern):
    for layer in ("checks", "explore", "bench", "solutions"):
        assert (PACKAGE / layer / f"{pattern}.py").exists(), f"labsupport/{layer}/{pattern}.py"


def test_mechanism_docstring_names_its_notebook():
    for ex in exercises.COURSE:
        doc = ast.get_docstring(ast.parse((PACKAGE / f"{ex.module}.py").read_text())) or ""
        assert ex.notebook in doc or ex.id in doc, f"{ex.module}.py: name {ex.notebook}"


def test_no_file_in_labsupport_is_over_600_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > ANY_FILE_MAX_LINES}
    assert not long, long


def test_the_import_reader_sees_every_import_form():
    """The check above is only as good as this reader."""
    found = imported_modules("import labsupport.checks.x\nfrom labsupport.explore import y\n"
                             "from .services import z\nfrom . import bench\n"
                             "def f():\n    import labsupport.solutions\n", "labsupport")
    assert {"labsupport.checks.x", "labsupport.explore.y", "labsupport.services.z",
            "labsupport.bench", "labsupport.solutions"} <= found
