"""Rewrite references to design documents that are not in this repository into references to ``docs/``.

Older docstrings cite two documents that were never part of the repository, the design and the devices
specification, by section number. Each rule below maps such a reference, whatever line breaks and indentation
fall inside it, to the file and section of ``docs/`` that now holds the same content. The rules are tried in
order at each position; the more specific ones come first.

Usage::

    python tools/docrefs.py                 rewrite every project file that needs it, listing each change
    python tools/docrefs.py --check         list what would change, change nothing; exit 1 if anything would
    python tools/docrefs.py PATH [PATH ...] only these files

``tests/test_docs.py`` fails while any project file still cites one of the two documents, or cites a
``docs/`` file or section that does not exist.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Spelt in two pieces so that this file does not itself cite the documents it removes.
DESIGN = "DESIGN" + ".md"
DEVICES = "DEVICES" + ".md"

#: (old reference, new reference). In the old text any run of white space also matches a line break with
#: the next line's indentation.
RULES: tuple[tuple[str, str], ...] = (
    (f'{DESIGN} section 3 ("Processes, loops and threads")', 'docs/architecture.md, "Inside the controller"'),
    (
        f'({DESIGN}, section 4: "Every start-up sends output off to the laser driver and verifies it before '
        'anything else")',
        '(docs/architecture.md, "Start-up order")',
    ),
    (f"Start-up order ({DESIGN} section 4)", "Start-up order (docs/architecture.md)"),
    (f'Wire protocol: {DEVICES}, "Laser driver".', 'See docs/devices.md, "Laser driver".'),
    (f"A line of the simulator command language ({DEVICES});", "A simulator command line (docs/devices.md);"),
    (f"permission to emit ({DESIGN} section 4)", 'permission to emit (docs/safety.md, "Permission to emit")'),
    (
        f"(seed ``system_config`` and {DEVICES} defaults)",
        '(seed ``system_config``; defaults: docs/safety.md, "Permission to emit")',
    ),
    (f"Behaviour decided where {DEVICES} is silent:", "Behaviour in detail:"),
    (f"{DESIGN} section 3", "docs/architecture.md"),
    (f"{DESIGN} section 4", "docs/safety.md"),
    (f"{DESIGN} section 5", 'docs/architecture.md, "Running a protocol"'),
    (f"{DESIGN} section 8", 'docs/architecture.md, "Command line"'),
    (DEVICES, "docs/devices.md"),
)

#: Longest line ruff allows in Python files (pyproject.toml).
LINE_LIMIT = 110

_SKIP_PARTS = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache", ".hypothesis"}
_TEXT_SUFFIXES = {
    ".py",
    ".md",
    ".toml",
    ".txt",
    ".cfg",
    ".ini",
    ".sh",
    ".service",
    ".rules",
    ".json",
    ".tcss",
}


def _pattern(old: str) -> re.Pattern[str]:
    words = old.split()
    return re.compile(r"\s+".join(re.escape(word) for word in words))


_COMPILED: tuple[tuple[re.Pattern[str], str], ...] = tuple((_pattern(old), new) for old, new in RULES)
_ANY = re.compile("|".join(f"(?:{p.pattern})" for p, _ in _COMPILED))


@dataclass(frozen=True)
class Change:
    """One reference rewritten: where it started (1-based line) and its old and new text."""

    path: Path
    line: int
    old: str
    new: str

    def __str__(self) -> str:
        old = " ".join(self.old.split())
        try:
            shown = self.path.relative_to(ROOT)
        except ValueError:
            shown = self.path
        return f"{shown}:{self.line}: {old!r} -> {self.new!r}"


def rewrite(text: str) -> tuple[str, list[tuple[int, str, str]]]:
    """``text`` with every reference rewritten, and (line, old, new) for each rewrite."""
    found: list[tuple[int, str, str]] = []

    def replace(match: re.Match[str]) -> str:
        old = match.group(0)
        for pattern, new in _COMPILED:
            if pattern.fullmatch(old):
                found.append((text.count("\n", 0, match.start()) + 1, old, new))
                return new
        raise AssertionError(f"no rule matches {old!r}")  # the alternation is built from the rules

    return _ANY.sub(replace, text), found


def project_files(root: Path = ROOT) -> list[Path]:
    """The project's files: tracked and untracked-but-not-ignored ones from git, or a walk of ``root``."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=root,
            capture_output=True,
            check=True,
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        return sorted(_walk(root))
    paths = {root / name for name in listed.split("\0") if name}
    return sorted(p for p in paths if p.is_file() and not _SKIP_PARTS.intersection(p.parts))


def _walk(root: Path) -> Iterator[Path]:
    for path in root.rglob("*"):
        if path.is_file() and not _SKIP_PARTS.intersection(path.relative_to(root).parts):
            yield path


def read_text(path: Path) -> str | None:
    """The file's text, or None for a file that is not UTF-8 text."""
    if path.suffix not in _TEXT_SUFFIXES and path.suffix != "":
        return None
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def long_lines(path: Path, text: str) -> list[int]:
    """Line numbers of a Python file that are longer than :data:`LINE_LIMIT`."""
    if path.suffix != ".py":
        return []
    return [n for n, line in enumerate(text.splitlines(), 1) if len(line) > LINE_LIMIT]


def run(paths: Iterable[Path], *, write: bool) -> tuple[list[Change], list[str]]:
    """Rewrite (or, with ``write`` false, only look at) ``paths``; the changes and any warnings."""
    changes: list[Change] = []
    warnings: list[str] = []
    for path in paths:
        text = read_text(path)
        if text is None:
            continue
        new_text, found = rewrite(text)
        if not found:
            continue
        changes.extend(Change(path, line, old, new) for line, old, new in found)
        before = set(long_lines(path, text))
        warnings.extend(
            f"{path}:{n}: longer than {LINE_LIMIT} characters after the rewrite: reflow it"
            for n in long_lines(path, new_text)
            if n not in before
        )
        if write:
            path.write_text(new_text, encoding="utf-8")
    return changes, warnings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="list what would change; change nothing")
    parser.add_argument("paths", nargs="*", type=Path, help="files to rewrite (default: the whole project)")
    args = parser.parse_args(argv)
    paths = [p.resolve() for p in args.paths] if args.paths else project_files()
    changes, warnings = run(paths, write=not args.check)
    for change in changes:
        print(change)
    for warning in warnings:
        print(warning, file=sys.stderr)
    if args.check:
        return 1 if changes else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
