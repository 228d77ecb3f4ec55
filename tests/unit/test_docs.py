"""What the README and the guide tell a new user to type works as written."""

from __future__ import annotations

import ast
import re
import shlex
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "PHASE_6.0A_IMPLEMENTATION.md"]
DISTRIBUTION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]
PIP_INSTALL = re.compile(r"pip install ([^`\n#]+)")
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def pip_install_requirements(text: str) -> list[str]:
    """Every requirement argument of every ``pip install`` in ``text`` (options left out)."""
    found = []
    for match in PIP_INSTALL.finditer(text):
        found += [arg for arg in shlex.split(match[1]) if not arg.startswith("-")]
    return found


def installs_this_project(arg: str) -> bool:
    """A local checkout (``.``, ``.[extra]``) or a requirement naming our distribution."""
    if arg == "." or arg.startswith((".[", "./")):
        return True
    return canonicalize_name(Requirement(arg).name) == canonicalize_name(DISTRIBUTION)


def python_imports(path: Path) -> list[str]:
    """The import statements of every ```python block of ``path``, as source lines."""
    statements = []
    for block in PYTHON_BLOCK.findall(path.read_text()):
        tree = compile(block, str(path), "exec", ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                statements.append(ast.unparse(node))
    return statements


def test_distribution_name_is_not_the_taken_one() -> None:
    """pyproject's distribution is not "market-data-store", an unrelated project on the index."""
    assert canonicalize_name(DISTRIBUTION) != "market-data-store"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_docs_pip_install_lines_install_only_this_project(doc: Path) -> None:
    """Each ``pip install`` in README and guide installs this checkout or our distribution."""
    args = pip_install_requirements(doc.read_text())
    assert args, f"{doc.name} shows no install command"
    assert [arg for arg in args if not installs_this_project(arg)] == []


def test_install_check_rejects_the_other_distribution() -> None:
    """The install-line check flags the colliding name and accepts our own forms."""
    text = "pip install 'market-data-store[feedback]'\n`pip install -e '.[dev]'`"
    assert [installs_this_project(a) for a in pip_install_requirements(text)] == [False, True]
    assert installs_this_project(f"{DISTRIBUTION}[postgres] @ git+https://example.test/r.git")


DOC_IMPORTS = sorted({stmt for doc in DOCS for stmt in python_imports(doc)})


def test_docs_have_imports_to_check() -> None:
    """The extraction finds the README's and the guide's imports (the check is not vacuous)."""
    assert any("market_data_store" in stmt for stmt in python_imports(DOCS[0]))
    assert any("market_data_store" in stmt for stmt in python_imports(DOCS[1]))


@pytest.mark.parametrize("statement", DOC_IMPORTS)
def test_every_documented_import_works_as_written(statement: str) -> None:
    """Each import statement in a python code block of README or guide runs as written."""
    exec(statement, {})
