"""How a safety event's action is shown in a session's review: what the system did, and nothing when it did
nothing (no "E-stop released (none)")."""

from __future__ import annotations

import pytest

from control.review import _action_suffix


@pytest.mark.parametrize(
    ("action", "shown"),
    [
        (None, ""),
        ("", ""),
        ("none", ""),
        ("none (idle)", ""),
        ("output off, verified, board disarmed", " (output off, verified, board disarmed)"),
        ("nonexistent", " (nonexistent)"),
    ],
)
def test_an_action_is_shown_only_when_something_was_done(action: str | None, shown: str) -> None:
    assert _action_suffix(action) == shown
