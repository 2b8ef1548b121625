"""Sub-commands of ``tosca``: one module each, with ``register(subparsers)`` and ``run(args) -> int``."""

from __future__ import annotations

import sys


def fail(message: str) -> int:
    """Print a one-line reason on stderr and return the "refused or failed" exit code."""
    print(f"tosca: {message}", file=sys.stderr)
    return 1
