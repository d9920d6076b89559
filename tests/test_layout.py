"""The shape of the code: folders in pipeline order with no imports from later stages, short
functions and methods, and a repository that cites only its own documents."""

from __future__ import annotations

import ast
import io
import re
import subprocess
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The package's folders in the order data flows (README "Code map"); a module may import from
# its own folder and from earlier ones only.
ORDER = ("core", "data", "base", "pretrain", "masks", "cache", "models", "training", "sampling",
         "evaluation", "app", "bench")
# Code lines of one function or method: docstrings, comments and blank lines are not counted,
# nor the lines of a def nested inside it (that def is measured on its own).
MAX_FUNCTION_CODE_LINES = 40
_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)
_NON_CODE_TOKENS = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                    tokenize.DEDENT, tokenize.ENCODING, tokenize.ENDMARKER}


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


def _code_rows(source: str) -> set[int]:
    """The rows of `source` that hold code: rows covered by a token other than a comment or a
    line break, less the rows of module, class and function docstrings."""
    rows = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in _NON_CODE_TOKENS:
            rows.update(range(tok.start[0], tok.end[0] + 1))
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, (ast.Module, ast.ClassDef, *_FUNCTIONS))
                and ast.get_docstring(node, clean=False) is not None):
            rows.difference_update(range(node.body[0].lineno, node.body[0].end_lineno + 1))
    return rows


def _function_sizes(source: str) -> list[tuple[int, str, int]]:
    """(row, name, code lines) of every function and method in `source`."""
    rows = _code_rows(source)
    sizes = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, _FUNCTIONS):
            continue
        own = rows & set(range(node.lineno, node.end_lineno + 1))
        for inner in ast.walk(node):
            if inner is not node and isinstance(inner, _FUNCTIONS):
                first = min([inner.lineno] + [d.lineno for d in inner.decorator_list])
                own -= set(range(first, inner.end_lineno + 1))
        sizes.append((node.lineno, node.name, len(own)))
    return sizes


def test_the_length_rule_counts_code_lines_only():
    source = (
        'def outer(a,\n'
        '          b):\n'
        '    """Docstring,\n'
        '    two lines."""\n'
        '    # a comment\n'
        '\n'
        '    x = """a string\n'
        '    that is code"""\n'
        '    @staticmethod\n'
        '    def inner():\n'
        '        return 1\n'
        '    return x  # trailing comment\n'
        '\n'
        'class C:\n'
        '    def method(self):\n'
        '        """Docstring."""\n'
        '        pass\n')
    assert sorted(_function_sizes(source)) == [(1, "outer", 5), (10, "inner", 2),
                                                (15, "method", 2)]


@pytest.mark.parametrize("folder", ["facemogle", "stages"])
def test_functions_are_short(folder):
    long = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for row, name, size in _function_sizes(path.read_text()):
            if size > MAX_FUNCTION_CODE_LINES:
                long.append(f"{path.relative_to(ROOT)}:{row} {name}: {size} code lines")
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


# ----------------------------------------------------------------------------------------------
# Static imports, and no stage scripts started from the package
# ----------------------------------------------------------------------------------------------

# Calls that load a module from a file or run one by name or path.
LOADERS = {"spec_from_file_location", "spec_from_loader", "module_from_spec", "SourceFileLoader",
           "run_path", "run_module", "exec_module", "load_module"}
# A string that names a stage script as a module: "stages.x", "-m stages.x", "python -m stages.x"
# (an f-string's leading part "stages." included); prose that mentions one does not start so.
STAGE_MODULE = re.compile(r"\s*(\S*python\S*\s+)?(-m\s*)?stages\.")
# Package modules allowed to start a stage script, each with its reason: none. A module that
# needs what a stage does calls the package function behind it (e.g. `facemogle.cache.run`).
STAGE_LAUNCHERS: set[str] = set()


def _callee(node: ast.Call) -> str:
    return getattr(node.func, "attr", None) or getattr(node.func, "id", "")


def _own_dynamic_imports(path: Path) -> list[str]:
    """Lines of `path` that import a module of the package other than by an import statement:
    `importlib.import_module` / `__import__` of a `facemogle` name or of a computed name, or a
    module loaded from a file. A constant third-party name (an optional extra) is fine."""
    hits = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        name = _callee(node)
        if name in ("import_module", "__import__") and node.args:
            arg = node.args[0]
            is_other = (isinstance(arg, ast.Constant) and isinstance(arg.value, str)
                        and arg.value.split(".")[0] != "facemogle")
            if not is_other:
                hits.append(f"{path}:{node.lineno}: {name}({ast.unparse(arg)})")
        elif name in LOADERS:
            hits.append(f"{path}:{node.lineno}: {name}(...)")
    return hits


def _stage_launches(path: Path) -> list[str]:
    """Lines of `path` that import the `stages` scripts or name one as a module to run (a string
    such as "stages.x" or "-m stages.x" passed on to subprocess, torchrun or runpy)."""
    tree = ast.parse(path.read_text())
    bare = {id(node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}  # docstrings
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            modules = [node.module or ""]
        else:
            modules = []
        if any(m.split(".")[0] == "stages" for m in modules):
            hits.append(f"{path}:{node.lineno}: imports {modules}")
        if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                and id(node) not in bare and STAGE_MODULE.match(node.value)):
            hits.append(f"{path}:{node.lineno}: {node.value!r}")
    return hits


def test_the_package_imports_its_own_modules_statically():
    hits = [hit for path in _modules() for hit in _own_dynamic_imports(path)]
    assert not hits, "\n".join(hits)


def test_the_package_starts_no_stage_script():
    launches = {str(p.relative_to(ROOT)): _stage_launches(p) for p in _modules()}
    hits = [hit for name, found in launches.items() if name not in STAGE_LAUNCHERS
            for hit in found]
    assert not hits, "\n".join(hits)
    stale = [name for name in STAGE_LAUNCHERS if not launches.get(name)]
    assert not stale, f"STAGE_LAUNCHERS lists modules that start no stage script: {stale}"


def test_the_import_checks_see_dynamic_imports_and_stage_launches(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        '"""Run `python -m stages.train` first."""\n'
        "import importlib, importlib.util, subprocess, sys\n"
        "def f(name, module):\n"
        '    importlib.import_module("mediapipe")\n'  # an optional extra: fine
        '    importlib.import_module("facemogle.base.segmenter")\n'
        "    importlib.import_module(name)\n"
        '    importlib.util.spec_from_file_location("x", "x.py")\n'
        '    subprocess.run(["torchrun", "-m", "stages.cache_latents"])\n'
        '    subprocess.run([sys.executable, "-m", f"stages.{module}"])\n'
        '    subprocess.run("python -m stages.train --out x", shell=True)\n'
        '    raise ValueError("no provenance (python -m stages.pretrain)")\n'  # a message: fine
        "    from stages import train\n")
    assert [hit.split(":")[-2] for hit in _own_dynamic_imports(module)] == ["5", "6", "7"]
    assert sorted(int(hit.split(":")[-2]) for hit in _stage_launches(module)) == [8, 9, 10, 12]


# ----------------------------------------------------------------------------------------------
# Data paths come from facemogle/data/layout.py
# ----------------------------------------------------------------------------------------------

# The file names of the normalized data layout (`facemogle.data.layout`): every other module
# builds these paths with its helpers and constants, so the layout is written down once.
LAYOUT_FILE_NAMES = ("split.json", "presence.json", "captions.jsonl", "attributes.jsonl",
                     "skipped.json")
# Modules that own a format holding one of these names.
LAYOUT_OWNERS = {"facemogle/data/layout.py"}


def _layout_names_in_strings(path: Path) -> list[str]:
    """Lines of `path` with a string literal (an f-string's literal parts included) that holds
    one of `LAYOUT_FILE_NAMES`; docstrings and other bare string expressions are not code."""
    tree = ast.parse(path.read_text())
    bare = {id(node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    return [f"{name}:{node.lineno}: {node.value!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in bare and any(n in node.value for n in LAYOUT_FILE_NAMES)]


def test_data_paths_come_from_the_layout_module(tmp_path):
    module = tmp_path / "m.py"
    module.write_text('"""Reads split.json."""\n'
                      'def f(d):\n'
                      '    """The captions.jsonl of `d`."""\n'
                      '    return d / "split.json", f"{d}/presence.json", "captions"\n')
    assert sorted(hit.split(": ", 1)[1] for hit in _layout_names_in_strings(module)) == [
        "'/presence.json'", "'split.json'"]
    paths = _modules() + sorted((ROOT / "stages").rglob("*.py"))
    hits = [hit for path in paths if str(path.relative_to(ROOT)) not in LAYOUT_OWNERS
            for hit in _layout_names_in_strings(path)]
    assert not hits, "\n".join(hits)
