"""Alembic environment and versions of the records database (the schema lives here, not in ``create_all``).

No ``alembic.ini`` is needed: :func:`storage.maintenance.alembic_config` builds the configuration in code
with ``script_location`` set to :data:`SCRIPT_LOCATION`, the folder of this package, so it works from an
installed package as well as from a source tree. Version files are named ``YYYYMMDD_NNN_description.py``
with the revision id ``YYYYMMDD_NNN``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

#: Folder holding ``env.py``, ``script.py.mako`` and ``versions/``.
SCRIPT_LOCATION: Final = Path(__file__).resolve().parent
