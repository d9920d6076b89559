"""The shape of the code: folders in pipeline order with no imports from later stages, short
functions, and a repository that cites only its own documents."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The package's folders in the order data flows (README "Code map"); a module may import from
# its own folder and from earlier ones only.
ORDER = ("core", "data", "base", "masks", "cache", "models", "training", "sampling", "evaluation",
         "app", "bench")
MAX_FUNCTION_LINES = 60


def _modules() -> list[Path]:
    return sorted((ROOT / "facemogle").rglob("*.py"))


def _folder(path: Path) -> str | None:
    parts = path.relative_to(ROOT / "facemogle").parts
    return parts[0] if len(parts) > 1 else None


def _imported_folders(path: Path) -> set[str]:
    """The package folders `path` imports from, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "facemogle" and len(parts) > 1 and parts[1] in ORDER:
                found.add(parts[1])
    return found


def test_every_package_folder_has_a_place_in_the_order():
    folders = {p.name for p in (ROOT / "facemogle").iterdir()
               if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(ORDER)
    assert not [p.name for p in (ROOT / "facemogle").glob("*.py") if p.name != "__init__.py"]


def test_no_module_imports_from_a_later_pipeline_stage():
    later = []
    for path in _modules():
        own = _folder(path)
        for folder in _imported_folders(path):
            if ORDER.index(folder) > ORDER.index(own):
                later.append(f"{path.relative_to(ROOT)} imports facemogle.{folder}")
    assert not later, "\n".join(later)


def test_the_order_check_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from facemogle.app.pipeline import FaceMoGLEPipeline\n")
    assert _imported_folders(module) == {"app"}


@pytest.mark.parametrize("folder", ["facemogle", "stages"])
def test_functions_are_short(folder):
    long = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {size}")
    assert not long, "\n".join(long)


def test_the_repository_cites_only_its_own_documents():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    outside = re.compile(r"DESIGN\.md|STYLE\.md|reference/(official|offline|dvc)|\.\./shared")
    hits = []
    for name in files:
        path = ROOT / name
        if path.suffix not in (".py", ".md", ".yaml", ".toml", ".txt", "") or not path.is_file():
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if outside.search(line) and name != "tests/test_layout.py":
                hits.append(f"{name}:{n}: {line.strip()}")
    assert not hits, "\n".join(hits)
