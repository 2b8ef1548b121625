"""Encrypted session files (telemetry, video, snapshots): a streaming authenticated format, and its reader.

When the records are encrypted (:mod:`storage.crypto_db`), the files of a session folder are written in this
format. The key of every session file is derived from the database key (HKDF-SHA-256, so one key file serves
both), and each file has a key of its own, derived from the session key and 16 random bytes in the file's
header. The file is a header and a sequence of chunks::

    header   b"TOSCA-ENC\\x01" (10 bytes) + file salt (16 bytes)
    chunk    length of the sealed chunk (4 bytes, big-endian) + AES-256-GCM(chunk plaintext)

Chunk *i* is sealed with the nonce ``i`` (8 bytes, big-endian) + ``flag`` (4 bytes: 1 on the last chunk, 0
otherwise) and the header as associated data (the STREAM construction): a chunk altered, dropped, moved, or
taken from another file fails its tag, and a file cut short lacks its last chunk, which the reader reports
instead of returning a shortened file. A writer may seal a chunk at each flush, so the chunks vary in size
(at most :data:`MAX_CHUNK` bytes of plaintext each).

Writing: :class:`EncryptingWriter` writes a new encrypted file; :class:`ChunkSealer` seals chunks for a
writer that handles its own file (the telemetry writer); :func:`seal_session_files` encrypts files that were
written plain (a finished video, a snapshot), where the records are encrypted, and :func:`encrypt_file`
and :func:`encrypt_session_tree` do it unconditionally.

Reading: :func:`open_session_file` returns a binary file object for any session file, encrypted or not (a
plain file is opened as it is); :func:`read_session_file` returns its bytes. Both need the key of the data
directory the file lives in, found as the database's key is (``$TOSCA_DB_KEY_FILE``, else the location
recorded in the data directory), or given with ``key=``.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

from storage.crypto_db import (
    DatabaseKey,
    DatabaseKeyError,
    is_encrypted_file,
    required_key,
    switch_on,
)
from storage.errors import StorageError
from storage.paths import DataDir

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC: Final = b"TOSCA-ENC\x01"
SALT_BYTES: Final = 16
HEADER_BYTES: Final = len(MAGIC) + SALT_BYTES
TAG_BYTES: Final = 16
#: Most plaintext bytes in one chunk.
MAX_CHUNK: Final = 1 << 20
#: Plaintext bytes per chunk when a whole file is encrypted at once.
FILE_CHUNK: Final = 256 * 1024
_LENGTH: Final = struct.Struct(">I")
_SESSION_INFO: Final = b"tosca session files v1"
_FILE_INFO: Final = b"tosca session file key v1"
_FILE_MODE: Final = 0o640


class SessionFileError(StorageError):
    """A session file cannot be encrypted or decrypted: wrong key, altered, cut short, or not ours."""


def _hkdf(key: bytes, salt: bytes | None, info: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(key)


def session_key(database_key: DatabaseKey) -> bytes:
    """The key of the session files, derived from the database key."""
    return _hkdf(database_key.raw, None, _SESSION_INFO)


def _nonce(index: int, last: bool) -> bytes:
    return index.to_bytes(8, "big") + (b"\x00\x00\x00\x01" if last else b"\x00\x00\x00\x00")


def _cipher(key: bytes, salt: bytes) -> AESGCM:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(_hkdf(key, salt, _FILE_INFO))


def is_encrypted_session_file(path: Path) -> bool:
    """True when ``path`` begins with this format's header."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def data_dir_of(path: Path) -> Path | None:
    """The data directory holding the session file ``path`` (``DIR/sessions/...``), or None."""
    for parent in Path(path).absolute().parents:
        if parent.name == "sessions":
            return parent.parent
    return None


def session_key_for(path: Path) -> bytes | None:
    """The session-file key for writing a file at ``path`` in a data directory, or None when the records there
    are not encrypted (no key location recorded, the database plain). :class:`storage.crypto_db.
    DatabaseKeyError` when they are and the key cannot be had."""
    root = data_dir_of(path)
    if root is None:
        return None
    database = DataDir(root).db_path
    if not (switch_on(database) or is_encrypted_file(database)):
        return None
    return _key_of(root, path)


def _key_of(root: Path, path: Path) -> bytes:
    return session_key(required_key(DataDir(root).db_path))


class ChunkSealer:
    """The sealing half of the format, for a writer that does its own file handling: :attr:`header` opens
    the file, then :meth:`seal` gives each chunk's bytes (length prefix included), in order."""

    def __init__(self, key: bytes) -> None:
        salt = os.urandom(SALT_BYTES)
        self.header = MAGIC + salt
        self._aead = _cipher(key, salt)
        self._index = 0
        self.finished = False

    def seal(self, data: bytes, *, last: bool = False) -> bytes:
        """The next chunk, sealed, holding ``data`` (at most :data:`MAX_CHUNK` bytes); ``last`` closes the
        file (nothing may follow)."""
        if self.finished:
            raise ValueError("the last chunk was sealed already")
        if len(data) > MAX_CHUNK:
            raise ValueError(f"a chunk holds at most {MAX_CHUNK} bytes, got {len(data)}")
        sealed = self._aead.encrypt(_nonce(self._index, last), data, self.header)
        self._index += 1
        self.finished = last
        return _LENGTH.pack(len(sealed)) + sealed


class EncryptingWriter:
    """Write one encrypted session file: :meth:`write` buffers plaintext and seals full chunks, :meth:`flush`
    seals what is buffered as a chunk and hands it to the operating system, :meth:`close` seals the last
    chunk. The file is created exclusively (never over an existing file), mode 0640."""

    def __init__(self, path: Path, key: bytes) -> None:
        self.path = Path(path)
        self._sealer = ChunkSealer(key)
        self._pending = bytearray()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
        self._handle: IO[bytes] | None = os.fdopen(fd, "wb", buffering=0)
        self._out(self._sealer.header)

    def _out(self, data: bytes) -> None:
        assert self._handle is not None
        view = memoryview(data)
        while view:
            written = self._handle.write(view)
            view = view[written or 0 :]

    def _seal(self, data: bytes, last: bool) -> None:
        self._out(self._sealer.seal(data, last=last))

    def write(self, data: bytes) -> int:
        """Buffer ``data`` (sealed in chunks of :data:`MAX_CHUNK`); return its length."""
        if self._handle is None:
            raise ValueError("write to a closed session file")
        self._pending += data
        while len(self._pending) > MAX_CHUNK:
            self._seal(bytes(self._pending[:MAX_CHUNK]), last=False)
            del self._pending[:MAX_CHUNK]
        return len(data)

    def flush(self) -> None:
        """Seal the buffered bytes as one chunk (none when nothing is buffered)."""
        if self._handle is not None and self._pending:
            self._seal(bytes(self._pending), last=False)
            self._pending.clear()

    def fileno(self) -> int:
        assert self._handle is not None
        return self._handle.fileno()

    def fsync(self) -> None:
        """Flush, then ``fsync`` the file."""
        self.flush()
        if self._handle is not None:
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        """Seal the last chunk (the buffered bytes, possibly none), flush it to disk and close the file."""
        if self._handle is None:
            return
        try:
            self._seal(bytes(self._pending), last=True)
            self._pending.clear()
            os.fsync(self._handle.fileno())
        finally:
            handle, self._handle = self._handle, None
            handle.close()

    def abandon(self) -> None:
        """Seal the buffered bytes as a chunk, flush them to disk and close the file *without* its last chunk:
        the file then reads as cut short (its complete chunks with ``allow_unfinished``)."""
        if self._handle is None:
            return
        try:
            self.fsync()
        finally:
            handle, self._handle = self._handle, None
            handle.close()

    def __enter__(self) -> EncryptingWriter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _chunks(handle: IO[bytes], key: bytes, name: str, *, allow_unfinished: bool) -> Iterator[bytes]:
    header = handle.read(HEADER_BYTES)
    if len(header) < HEADER_BYTES or not header.startswith(MAGIC):
        raise SessionFileError(f"{name} is not an encrypted session file (bad header)")
    from cryptography.exceptions import InvalidTag

    aead = _cipher(key, header[len(MAGIC) :])
    index = 0
    while True:
        prefix = handle.read(_LENGTH.size)
        if not prefix:
            if allow_unfinished:
                return
            raise SessionFileError(f"{name} is cut short: its last chunk is missing ({index} chunks read)")
        if len(prefix) < _LENGTH.size:
            if allow_unfinished:
                return
            raise SessionFileError(f"{name} is cut short inside chunk {index}")
        (length,) = _LENGTH.unpack(prefix)
        if not TAG_BYTES <= length <= MAX_CHUNK + TAG_BYTES:
            raise SessionFileError(f"{name}: chunk {index} has an impossible length {length} (damaged)")
        sealed = handle.read(length)
        if len(sealed) < length:
            if allow_unfinished:
                return
            raise SessionFileError(f"{name} is cut short inside chunk {index}")
        for last in (False, True):
            try:
                plain = aead.decrypt(_nonce(index, last), sealed, header)
            except InvalidTag:
                continue
            break
        else:
            raise SessionFileError(
                f"{name}: chunk {index} does not decrypt (wrong key, or the file was altered)"
            )
        index += 1
        yield plain
        if last:
            if handle.read(1):
                raise SessionFileError(f"{name} has data after its last chunk (altered)")
            return


class _DecryptingReader(io.RawIOBase):
    def __init__(self, handle: IO[bytes], chunks: Iterator[bytes]) -> None:
        self._handle = handle
        self._chunks = chunks
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        view = memoryview(target).cast("B")
        while not self._buffer:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._buffer = chunk
        count = min(len(view), len(self._buffer))
        view[:count] = self._buffer[:count]
        self._buffer = self._buffer[count:]
        return count

    def close(self) -> None:
        if not self.closed:
            self._handle.close()
        super().close()


def open_session_file(
    path: Path, *, key: bytes | None = None, allow_unfinished: bool = False
) -> io.BufferedReader:
    """Open the session file ``path`` for reading its plaintext, encrypted or not.

    An encrypted file is decrypted as it is read, with ``key`` (a session-file key, :func:`session_key`) or
    the key of the data directory it lives in. Reading raises :class:`SessionFileError` when a chunk does not
    decrypt or the file is cut short; with ``allow_unfinished`` a file whose last chunk was never written (a
    crash while recording) yields its complete chunks instead. :class:`storage.crypto_db.DatabaseKeyError`
    when the key cannot be had. Use it as a context manager."""
    path = Path(path)
    handle = open(path, "rb")
    try:
        if handle.read(len(MAGIC)) != MAGIC:
            handle.seek(0)
            return handle
        handle.seek(0)
        if key is None:
            root = data_dir_of(path)
            if root is None:
                raise DatabaseKeyError(
                    f"{path.name} is encrypted and lies outside a data directory's sessions/: pass its key"
                )
            key = _key_of(root, path)
        chunks = _chunks(handle, key, path.name, allow_unfinished=allow_unfinished)
        return io.BufferedReader(_DecryptingReader(handle, chunks), buffer_size=FILE_CHUNK)
    except BaseException:
        handle.close()
        raise


def read_session_file(path: Path, *, key: bytes | None = None) -> bytes:
    """The whole plaintext of the session file ``path`` (see :func:`open_session_file`)."""
    with open_session_file(path, key=key) as handle:
        return handle.read()


def encrypt_file(path: Path, key: bytes) -> bool:
    """Replace the plain file ``path`` by its encrypted form (written beside it, flushed, then renamed);
    False when it is already encrypted."""
    path = Path(path)
    if is_encrypted_session_file(path):
        return False
    partial = path.with_name(f".{path.name}.encrypting")
    partial.unlink(missing_ok=True)
    try:
        with open(path, "rb") as source, EncryptingWriter(partial, key) as target:
            while block := source.read(FILE_CHUNK):
                target.write(block)
                target.flush()
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return True


def seal_session_files(paths: Iterable[Path | str]) -> int:
    """Encrypt each of ``paths`` (files just written into a session folder, e.g. a finished video or a
    snapshot) when the records of its data directory are encrypted; return how many were encrypted. A no-op
    where encryption is off. :class:`storage.crypto_db.DatabaseKeyError` when it is on and the key cannot be
    had (the files then stay as they are)."""
    count = 0
    for item in paths:
        path = Path(item)
        key = session_key_for(path)
        if key is not None and path.is_file():
            count += encrypt_file(path, key)
    return count


def encrypt_session_tree(folder: Path, key: bytes) -> int:
    """Encrypt every plain file under ``folder`` (a data directory's ``sessions/``); return how many."""
    count = 0
    if not Path(folder).is_dir():
        return 0
    for base, _dirs, files in os.walk(folder):
        for name in sorted(files):
            if name.startswith(".") and name.endswith(".encrypting"):
                continue
            count += encrypt_file(Path(base) / name, key)
    return count


def seal_left_plain_files(data_root: Path) -> int:
    """Encrypt every plain file left in the session folders of the data directory ``data_root`` (a crash
    before a file was encrypted, or ``tosca db encrypt`` run while files were being written) when its records
    are encrypted; return how many. An encrypted file is left untouched; 0 where encryption is off.
    :class:`storage.crypto_db.DatabaseKeyError` when it is on and the key cannot be had."""
    data = DataDir(Path(data_root))
    if not (switch_on(data.db_path) or is_encrypted_file(data.db_path)):
        return 0
    return encrypt_session_tree(data.sessions, session_key(required_key(data.db_path)))


__all__ = [
    "FILE_CHUNK",
    "MAGIC",
    "MAX_CHUNK",
    "ChunkSealer",
    "EncryptingWriter",
    "SessionFileError",
    "data_dir_of",
    "encrypt_file",
    "encrypt_session_tree",
    "is_encrypted_session_file",
    "open_session_file",
    "read_session_file",
    "seal_left_plain_files",
    "seal_session_files",
    "session_key",
    "session_key_for",
]
