"""Names a package offers but loads on first use (PEP 562).

``storage`` and ``tui.screens`` each offer their main names at the package level, but importing
the package must stay light: the console draws its first screen before SQLAlchemy and Alembic are loaded. Each
package keeps a table of where its names are defined and gets its module ``__getattr__`` and ``__dir__`` from
:func:`lazy_attributes`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(
    package: str, sources: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module ``__getattr__`` and ``__dir__`` of ``package``: a name listed in ``sources`` is imported
    from the module named there when first asked for, and kept in ``namespace`` (the package's globals)."""

    def get(name: str) -> Any:
        module = sources.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def names() -> list[str]:
        return sorted(set(namespace) | set(sources))

    return get, names
