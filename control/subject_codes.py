"""Subject codes: the clinic's pattern, and every code already issued, so that none is ever issued twice.

This module is the one statement of the subject code rule: every check of a code's form, every next free
code and every code pattern goes through :class:`CodePattern`. The clinic's pattern is the ``system_config``
setting ``subject_code_pattern`` (its default, ``P-YYYY-NNNN``, is stated in :mod:`control.system_config`).
Digits are ASCII ``0-9`` only. The pattern's language is small:

* ``YYYY``: the four-digit year the subject is created in (a typed code may carry any year 1000 to 9999);
* one run of ``N`` (1 to 9 of them): the subject's number, padded with zeros to the run's length, from 1;
* anything else is literal text, made of ``A-Z a-z 0-9 - _`` (the letters ``N`` and ``Y`` only inside those
  two tokens, so a pattern reads one way only); at most 32 characters.

With ``YYYY`` numbers count within each year; without it they count over all years. Examples: ``P-YYYY-NNNN``
gives ``P-2026-0001``, ``LX_NNNNN`` gives ``LX_00001``, ``YYYY-NNN-B`` gives ``2026-001-B``.

A code once issued is never issued again, even when the database is restored from an older backup that does
not know it: the next free code is one more than the highest number of its year among the subjects in the
database, the folders of ``sessions/`` (one per subject code that had a session) and the file
``issued_subject_codes.txt`` of the data directory, to which every created subject's code is appended (and
flushed to disk) before the subject is written. A typed code found in any of them is refused.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

#: Longest pattern accepted, in characters.
MAX_PATTERN_LENGTH: Final = 32
#: Most digits a number run may have.
MAX_NUMBER_DIGITS: Final = 9
#: The file of issued codes, in the data directory (one code per line, appended).
ISSUED_CODES_FILE: Final = "issued_subject_codes.txt"

_LITERAL: Final = re.compile(r"[A-Za-z0-9_-]")
_TOKENS: Final = re.compile(r"YYYY|N+|.", re.DOTALL)


class CodePatternError(ValueError):
    """A pattern or a code was refused; the message says why in one line."""


@dataclass(frozen=True, slots=True)
class CodePattern:
    """A parsed subject code pattern (see the module documentation)."""

    text: str
    regex: re.Pattern[str]
    digits: int
    has_year: bool
    _parts: tuple[str, ...]

    @classmethod
    def parse(cls, text: object) -> CodePattern:
        """Parse ``text``; CodePatternError names what is wrong with it."""
        if not isinstance(text, str) or not text:
            raise CodePatternError(f"a subject code pattern must be non-empty text; got {text!r}")
        if len(text) > MAX_PATTERN_LENGTH:
            raise CodePatternError(
                f"subject code pattern {text!r} has {len(text)} characters; at most {MAX_PATTERN_LENGTH}"
            )
        parts: list[str] = []
        regex = ""
        digits = 0
        has_year = False
        for token in _TOKENS.findall(text):
            if token == "YYYY":
                if has_year:
                    raise CodePatternError(f"subject code pattern {text!r} has YYYY more than once")
                has_year = True
                parts.append(token)
                regex += "(?P<year>[0-9]{4})"
            elif token.startswith("N"):
                if digits:
                    raise CodePatternError(f"subject code pattern {text!r} has more than one run of N")
                if len(token) > MAX_NUMBER_DIGITS:
                    raise CodePatternError(
                        f"subject code pattern {text!r}: a number has at most {MAX_NUMBER_DIGITS} digits"
                    )
                digits = len(token)
                parts.append(token)
                regex += f"(?P<number>[0-9]{{{digits}}})"
            elif token == "Y":
                raise CodePatternError(f"subject code pattern {text!r}: Y is only allowed as YYYY (the year)")
            elif _LITERAL.fullmatch(token):
                parts.append(token)
                regex += re.escape(token)
            else:
                raise CodePatternError(
                    f"subject code pattern {text!r}: {token!r} is not allowed (letters, digits, - and _ only)"
                )
        if not digits:
            raise CodePatternError(f"subject code pattern {text!r} needs a run of N for the number")
        return cls(text, re.compile(regex), digits, has_year, tuple(parts))

    @property
    def max_number(self) -> int:
        """The highest number a code can have (within a year, when the pattern has one)."""
        return int(10**self.digits) - 1

    def format(self, year: int, number: int) -> str:
        """The code of ``number`` in ``year`` (the year is ignored by a pattern without YYYY)."""
        if not 1 <= number <= self.max_number:
            raise CodePatternError(f"subject code numbers run from 1 to {self.max_number}; got {number}")
        if self.has_year and not 1000 <= year <= 9999:
            raise CodePatternError(f"the year of a subject code must have four digits; got {year}")
        out = ""
        for part in self._parts:
            if part == "YYYY":
                out += f"{year:04d}"
            elif part.startswith("N"):
                out += f"{number:0{self.digits}d}"
            else:
                out += part
        return out

    def parse_code(self, code: str) -> tuple[int | None, int] | None:
        """``(year, number)`` of a code of this pattern (year None without YYYY), or None for any other."""
        match = self.regex.fullmatch(code)
        if match is None:
            return None
        year = int(match.group("year")) if self.has_year else None
        return year, int(match.group("number"))

    def check(self, code: object, *, example_year: int) -> str:
        """Return ``code`` when it has this pattern's form with a number from 1; CodePatternError if not."""
        example = self.format(example_year, 1)
        parsed = self.parse_code(code) if isinstance(code, str) else None
        if parsed is None:
            raise CodePatternError(f"subject code must look like {self.text} (e.g. {example}); got {code!r}")
        if parsed[1] == 0:
            raise CodePatternError(
                f"subject code numbers start at {1:0{self.digits}d} (e.g. {example}); got {code}"
            )
        assert isinstance(code, str)
        return code

    def next_code(self, used: Iterable[str], year: int) -> str:
        """One more than the highest number of ``year`` (any year without YYYY) among ``used``; codes of
        other forms are ignored. CodePatternError when every number is used."""
        highest = 0
        for code in used:
            parsed = self.parse_code(code)
            if parsed is not None and (not self.has_year or parsed[0] == year):
                highest = max(highest, parsed[1])
        if highest >= self.max_number:
            scope = f" of {year}" if self.has_year else ""
            raise CodePatternError(
                f"every subject code{scope} is used (up to {self.format(year, self.max_number)})"
            )
        return self.format(year, highest + 1)


def issued_codes_path(data_root: Path) -> Path:
    """The file of issued codes in the data directory ``data_root``."""
    return data_root / ISSUED_CODES_FILE


def codes_on_disk(data_root: Path) -> set[str]:
    """Codes the data directory shows were issued: the entries of ``sessions/`` and the lines of the issued
    codes file (blocking file-system work: call it off the event loop). Unreadable parts are skipped."""
    found: set[str] = set()
    with contextlib.suppress(OSError):
        found.update(entry.name for entry in os.scandir(data_root / "sessions"))
    with contextlib.suppress(OSError, UnicodeDecodeError):
        text = issued_codes_path(data_root).read_text(encoding="utf-8")
        found.update(line.strip() for line in text.splitlines() if line.strip())
    return found


def record_issued(data_root: Path, code: str) -> None:
    """Append ``code`` to the issued codes file and flush it to disk (OSError when that fails: the subject
    must then not be created, or its code could be issued again after a restore)."""
    path = issued_codes_path(data_root)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, f"{code}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = [
    "ISSUED_CODES_FILE",
    "CodePattern",
    "CodePatternError",
    "codes_on_disk",
    "issued_codes_path",
    "record_issued",
]
