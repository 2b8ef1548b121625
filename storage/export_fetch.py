"""Fetching a research export over SSH: one folder of the data directory's ``exports/``, as a tar stream.

The kiosk's forced command (``kiosk/tosca-remote-session``) runs ``tosca export fetch NAME`` as the
engineer's own Unix user for ``ssh -T <user>@<kiosk> fetch-export NAME > NAME.tar``. ``NAME`` must be a plain
folder name (:func:`check_name`: letters, digits, ``_ . + -``, not starting with a dot or a dash, no ``..``,
no slash); it must be a real folder directly under ``exports/`` (not a symbolic link), or a regular file there
(the audit trail's CSV export: the tar then holds that file alone). The tar holds ``NAME/`` and, below it,
the export's folders and regular files only (a symbolic link or a special file is
left out; each file is opened without following links). It is written to the given binary stream as it is
read: nothing is written on the kiosk. The engineer's user reads the export through the group permission the
controller gave it (``tosca-records``); the function needs no database.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import tarfile
from pathlib import Path
from typing import IO, Final

from storage.errors import StorageError
from storage.paths import DataDir

#: A plain export folder name (the same rule as the remote console's ``remote_export`` folder).
NAME_RE: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,119}$")


class FetchError(StorageError):
    """A fetch refused (a bad name, no such export, unreadable); the message is one line."""


def check_name(name: str) -> str:
    """``name`` when it is a plain folder name under ``exports/``; raises :class:`FetchError` otherwise."""
    if not NAME_RE.fullmatch(name) or ".." in name:
        shown = name[:40].encode("unicode_escape").decode("ascii")
        raise FetchError(
            f"{shown!r} is not an export's name: a plain folder name under exports/ "
            "(letters, digits, _ . + -; no slash, not starting with a dot or a dash)"
        )
    return name


def export_folder(data_dir: DataDir, name: str) -> Path:
    """The export ``name`` (a real folder, or a regular file, directly under ``exports/``), or
    :class:`FetchError`."""
    folder = data_dir.root / "exports" / check_name(name)
    try:
        info = folder.lstat()
    except FileNotFoundError:
        raise FetchError(f"no export {name} in {folder.parent}") from None
    except OSError as exc:
        raise FetchError(f"cannot read {folder}: {exc.strerror or exc}") from None
    if not (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)):
        raise FetchError(f"{folder} is not an export")
    return folder


def stream_export(data_dir: DataDir, name: str, out: IO[bytes]) -> int:
    """Write the export ``name`` to ``out`` as a tar stream; return the number of files in it."""
    folder = export_folder(data_dir, name)
    count = 0
    try:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            if not folder.is_dir():  # a single-file export (the audit trail's CSV)
                return _add_file(tar, folder, name)
            tar.add(folder, arcname=name, recursive=False)
            for base, dirs, files in os.walk(folder, onerror=_raise):
                dirs.sort()
                here = Path(base)
                relative = here.relative_to(folder)
                for sub in dirs:
                    path = here / sub
                    if stat.S_ISDIR(path.lstat().st_mode):
                        tar.add(path, arcname=str(Path(name, relative, sub)), recursive=False)
                for file_name in sorted(files):
                    count += _add_file(tar, here / file_name, str(Path(name, relative, file_name)))
    except OSError as exc:
        raise FetchError(f"cannot read the export {name}: {exc.strerror or exc}") from None
    return count


def _raise(error: OSError) -> None:
    raise error


def _add_file(tar: tarfile.TarFile, path: Path, arcname: str) -> int:
    """Add ``path`` when it is a regular file (opened without following a link, never blocking on a special
    file); 1 when added, else 0."""
    if not stat.S_ISREG(path.lstat().st_mode):
        return 0
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # replaced by a symbolic link meanwhile: left out
            return 0
        raise
    with os.fdopen(fd, "rb") as handle:
        info = tar.gettarinfo(arcname=arcname, fileobj=handle)
        if not info.isreg():
            return 0
        tar.addfile(info, handle)
    return 1


__all__ = ["NAME_RE", "FetchError", "check_name", "export_folder", "stream_export"]
