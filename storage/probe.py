"""One question the console asks before its database is open: is there an administrator who can log in?

The console draws its entry screen (first run or login) before it loads SQLAlchemy and upgrades the
database, so that the screen is up in well under a second. This module answers with the standard library's
``sqlite3`` alone (SQLCipher with its key for an encrypted database, :mod:`storage.crypto_db`), read only,
and answers "don't know" (``None``) whenever it cannot be sure (a missing or wrong key too); the console
then opens the database first and asks :meth:`control.accounts.AccountService.needs_first_admin`, which
stays the authority (the two are compared in the tests).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Final

from storage.crypto_db import connect as open_database
from storage.errors import StorageError

#: Active admins who have a password (the same rule as ``UsersRepository.count_active_admins_with_password``).
USABLE_ADMINS_SQL: Final = (
    "SELECT count(*) FROM tech_users WHERE role = 'admin' AND is_active = 1 AND password_hash IS NOT NULL"
)
#: How long the query waits for a writer, ms (the controller may be writing a treatment record).
BUSY_TIMEOUT_MS: Final = 2000


def needs_first_admin(db_path: Path) -> bool | None:
    """True when ``db_path`` does not exist yet or has no usable admin, False when it has one, None when
    the file cannot tell (no ``tech_users`` table yet, unreadable, damaged, locked)."""
    if not db_path.exists():
        return True
    try:
        connection = open_database(db_path.resolve(), read_only=True, timeout_s=BUSY_TIMEOUT_MS / 1000)
    except (sqlite3.Error, StorageError):
        return None
    try:
        row = connection.execute(USABLE_ADMINS_SQL).fetchone()
    except sqlite3.Error:
        return None
    finally:
        connection.close()
    return int(row[0]) == 0
