"""Widgets shared by the console's screens."""

from __future__ import annotations

from tui.widgets.header import ConsoleHeader

__all__ = ["ConsoleHeader"]
