"""The design documents in ``docs/`` stay true to the repository.

* Every test the hazard table (``docs/hazards.md``) names exists: the named test files are collected by pytest
  in a subprocess (nothing is run) and each node id in the table must be one of the collected ids, or the id
  of a test function or class whose cases were collected.
* No project file (code, docstrings, README, deployment files) cites the two design documents that are not in
  the repository, and every ``docs/<file>.md`` a project file cites exists, as does the section it names
  (``docs/<file>.md, "<heading>"``). Links between the documents resolve too.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
HAZARDS = DOCS / "hazards.md"


def _load_docrefs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docrefs", ROOT / "tools" / "docrefs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


docrefs = _load_docrefs()

#: The documents that used to be cited and are not in the repository (spelt in pieces so this file does not
#: cite them itself).
ABSENT_DOCUMENTS = ("DESIGN" + ".md", "DEVICES" + ".md")
#: The table's columns, in order.
COLUMNS = ["id", "hazard", "cause", "control", "tests"]
NODE_ID = re.compile(r"`(tests/[^`\s]+\.py::[^`]+)`")
DOC_REF = re.compile(r"(?<![\w/.-])docs/([A-Za-z0-9_.-]+\.md)(?:,\s+\"([^\"]+)\"|\s+\(\"([^\"]+)\"\))?")
MD_LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.MULTILINE)


# ------------------------------------------------------------------------------------------ hazard table
def hazard_rows(text: str) -> list[dict[str, str]]:
    """The rows of the first Markdown table in ``text`` whose header is :data:`COLUMNS`, as dicts."""
    rows: list[dict[str, str]] = []
    header: list[str] | None = None
    for line in text.splitlines():
        if not line.startswith("|"):
            if header is not None and rows:
                break
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header is None:
            if cells == COLUMNS:
                header = cells
            continue
        if all(set(cell) <= {"-", ":"} for cell in cells):
            continue
        if len(cells) != len(header):
            raise AssertionError(f"hazard table row with {len(cells)} cells, expected {len(header)}: {line}")
        rows.append(dict(zip(header, cells, strict=True)))
    return rows


def named_tests(row: dict[str, str]) -> list[str]:
    """The node ids in a row's tests cell."""
    return NODE_ID.findall(row["tests"])


def defined_tests(path: Path) -> frozenset[str]:
    """Node ids of the tests a file defines, read from its syntax tree without importing it: test functions,
    test classes (also ``TestX = Machine.TestCase``) and their test methods."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    prefix = path.relative_to(ROOT).as_posix()
    ids: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test"):
            ids.add(f"{prefix}::{node.name}")
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            ids.add(f"{prefix}::{node.name}")
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name.startswith("test"):
                    ids.add(f"{prefix}::{node.name}::{item.name}")
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id.startswith("Test"):
                    ids.add(f"{prefix}::{target.id}")
    return frozenset(ids)


@cache
def collected(files: tuple[str, ...]) -> frozenset[str]:
    """Node ids, parametrised cases included, pytest collects from ``files`` (nothing is run)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-n",
            "0",
            "-p",
            "no:randomly",
            "-p",
            "no:cacheprovider",
            *files,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    ids = frozenset(line.strip() for line in result.stdout.splitlines() if "::" in line)
    if result.returncode != 0 and not ids:
        raise AssertionError(f"collection failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return ids


def missing_tests(named: list[str], ids: frozenset[str]) -> list[str]:
    """The node ids in ``named`` that name no test in ``ids`` (an id without a bracket also matches each of
    its parametrised cases and, for a class, each of its tests)."""
    missing = []
    for node in named:
        if node in ids:
            continue
        if "[" not in node and any(i.startswith((node + "[", node + "::")) for i in ids):
            continue
        missing.append(node)
    return missing


def existing_tests(named: list[str]) -> frozenset[str]:
    """The ids to judge ``named`` against: every test the named files define, and, for the files where a
    parametrised case is named, the cases pytest collects."""
    files = sorted({node.split("::")[0] for node in named})
    ids: set[str] = set()
    for file in files:
        if (ROOT / file).is_file():
            ids |= defined_tests(ROOT / file)
    with_cases = tuple(
        sorted({n.split("::")[0] for n in named if "[" in n and (ROOT / n.split("::")[0]).is_file()})
    )
    if with_cases:
        ids |= collected(with_cases)
    return frozenset(ids)


def test_the_hazard_table_has_every_column_and_each_hazard_names_tests() -> None:
    rows = hazard_rows(HAZARDS.read_text(encoding="utf-8"))
    assert len(rows) >= 20, "the hazard table is missing or short"
    ids = [row["id"] for row in rows]
    assert len(set(ids)) == len(ids), f"hazard ids repeat: {ids}"
    for row in rows:
        for column in ("hazard", "cause", "control"):
            assert row[column], f"{row['id']}: the {column} is empty"
        tests = named_tests(row)
        assert tests, f"{row['id']}: no test named (write node ids in backquotes)"
        for node in tests:
            assert (ROOT / node.split("::")[0]).is_file(), f"{row['id']}: no test file for {node}"


def test_every_test_the_hazard_table_names_exists() -> None:
    rows = hazard_rows(HAZARDS.read_text(encoding="utf-8"))
    named = sorted({node for row in rows for node in named_tests(row)})
    missing = missing_tests(named, existing_tests(named))
    assert not missing, "the hazard table names tests that do not exist:\n" + "\n".join(missing)


def test_a_renamed_or_removed_test_is_reported_missing() -> None:
    ids = frozenset(
        {
            "tests/a.py::test_one",
            "tests/a.py::test_two[x]",
            "tests/a.py::test_two[y]",
            "tests/a.py::TestMachine::runTest",
        }
    )
    named = [
        "tests/a.py::test_one",
        "tests/a.py::test_two",
        "tests/a.py::test_two[y]",
        "tests/a.py::TestMachine",
        "tests/a.py::test_on",
        "tests/a.py::test_two[z]",
        "tests/b.py::test_one",
    ]
    assert missing_tests(named, ids) == [
        "tests/a.py::test_on",
        "tests/a.py::test_two[z]",
        "tests/b.py::test_one",
    ]


def test_rows_are_read_from_the_table_only() -> None:
    text = "\n".join(
        [
            "| a | b |",
            "| --- | --- |",
            "| 1 | 2 |",
            "",
            "| id | hazard | cause | control | tests |",
            "| --- | --- | --- | --- | --- |",
            "| H1 | burn | pedal | interlock | `tests/x.py::test_a`<br>`tests/x.py::test_b[p q]` |",
            "",
            "`tests/y.py::test_not_in_the_table`",
        ]
    )
    rows = hazard_rows(text)
    assert [row["id"] for row in rows] == ["H1"]
    assert named_tests(rows[0]) == ["tests/x.py::test_a", "tests/x.py::test_b[p q]"]


# ---------------------------------------------------------------------------------------- references
def _headings(path: Path) -> set[str]:
    return {" ".join(h.split()) for h in HEADING.findall(path.read_text(encoding="utf-8"))}


def reference_problems(path: Path, text: str) -> list[str]:
    """What is wrong with the document references in one file's ``text``."""
    problems = []
    for name in ABSENT_DOCUMENTS:
        for match in re.finditer(re.escape(name), text):
            line = text.count("\n", 0, match.start()) + 1
            problems.append(f"{path}:{line}: cites {name}, which is not in the repository")
    for match in DOC_REF.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        target = DOCS / match.group(1)
        if not target.is_file():
            problems.append(f"{path}:{line}: cites docs/{match.group(1)}, which does not exist")
            continue
        section = match.group(2) or match.group(3)
        if section is not None and " ".join(section.split()) not in _headings(target):
            problems.append(f"{path}:{line}: docs/{match.group(1)} has no section {section!r}")
    return problems


def test_no_project_file_cites_a_document_that_is_not_in_the_repository() -> None:
    problems: list[str] = []
    for path in docrefs.project_files(ROOT):
        text = docrefs.read_text(path)
        if text is not None:
            problems.extend(reference_problems(path.relative_to(ROOT), text))
    assert not problems, (
        "references to documents that do not exist (python tools/docrefs.py rewrites the old ones):\n"
        + "\n".join(problems)
    )


def test_links_between_the_documents_resolve() -> None:
    problems = []
    for doc in sorted(DOCS.glob("*.md")):
        for target in MD_LINK.findall(doc.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):
                continue
            file = target.split("#", 1)[0]
            if file and not (doc.parent / file).exists():
                problems.append(f"{doc.name}: link to {target} does not resolve")
    assert not problems, "\n".join(problems)


DESIGN_DOC, DEVICES_DOC = ABSENT_DOCUMENTS
NOWHERE = "docs/" + "nowhere.md"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('see docs/safety.md, "Faults"', []),
        ('see docs/safety.md ("Permission to emit")', []),
        ("see docs/devices.md" + ', "The simulated\n    rig"', []),
        ("see " + NOWHERE, [f"x.py:1: cites {NOWHERE}, which does not exist"]),
        ("see docs/safety.md" + ', "No such part"', ["x.py:1: docs/safety.md has no section 'No such part'"]),
        (f"\nsee {DESIGN_DOC} section 4", [f"x.py:2: cites {DESIGN_DOC}, which is not in the repository"]),
        (f"({DEVICES_DOC})", [f"x.py:1: cites {DEVICES_DOC}, which is not in the repository"]),
    ],
)
def test_references_are_judged(text: str, expected: list[str]) -> None:
    assert reference_problems(Path("x.py"), text) == expected


def test_the_rewrite_tool_maps_old_references_to_existing_sections() -> None:
    old = (
        f'"""Driver ({DEVICES_DOC}, "Actuator").\n\nOrder ({DESIGN_DOC}, section 4: '
        '"Every start-up sends output off to the laser driver and\nverifies it before anything else"):\n'
        f"Start-up order ({DESIGN_DOC} section 4): the rig.\n"
    )
    new, found = docrefs.rewrite(old)
    assert new == (
        '"""Driver (docs/devices.md, "Actuator").\n\nOrder (docs/architecture.md, "Start-up order"):\n'
        "Start-up order (docs/architecture.md): the rig.\n"
    )
    assert [line for line, _old, _new in found] == [1, 3, 5]
    assert reference_problems(Path("x.py"), new) == []
    for _old, replacement in docrefs.RULES:
        assert reference_problems(Path("rule"), replacement) == [], replacement


def test_the_tests_a_file_defines_are_read_without_importing_it() -> None:
    ids = defined_tests(Path(__file__))
    assert "tests/test_docs.py::test_the_tests_a_file_defines_are_read_without_importing_it" in ids
    assert "tests/test_docs.py::defined_tests" not in ids
    stateful = defined_tests(ROOT / "tests" / "control" / "test_supervisor_stateful.py")
    assert "tests/control/test_supervisor_stateful.py::TestSupervisorStateMachine" in stateful
