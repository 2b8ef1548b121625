"""A session video encrypted as it is recorded: the plaintext only ever passes through a FIFO, never the disk.

When the records are encrypted, the controller does not let the camera write its video into the session
folder. It starts a :class:`VideoSeal`, which:

1. makes a private folder (mode 0700) holding one FIFO (mode 0600) named like a video file (``video.mkv``, so
   the camera's writer picks Matroska, whose writer never seeks back);
2. starts the sealing process, ``python -m storage.video_seal --fifo FIFO --out FILE``, in a session of its
   own (a Ctrl-C at the terminal does not reach it; it drops a real-time policy, runs at nice 10 and off the
   controller's CPU when the controller is pinned to one), and hands it the session-file key on its
   standard input (never on its command line or in its environment);
3. waits for the process to have created the encrypted file (exclusively, mode 0640, :class:`storage.
   crypto_files.EncryptingWriter`); the camera is then asked to record into the FIFO as if it were a file.

The sealing process reads the FIFO and writes the encrypted file, sealing a chunk at least every
:data:`SEAL_PERIOD_S` seconds (and flushing it to disk), so the copying and the encryption never run in the
controller's process. When the camera closes the video the process reads end of file and waits for the
controller's word: ``finish`` seals the last chunk (the file is complete); anything else, or the controller
gone, leaves the file without its last chunk, read back as cut short (``allow_unfinished``: every chunk sealed
so far). A camera or a controller killed mid-recording therefore leaves an encrypted file readable up to its
last sealed chunk, at most about a second short of the frames the camera wrote.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import os
import select
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

from storage.background import yield_to_the_controller
from storage.crypto_files import HEADER_BYTES, EncryptingWriter, SessionFileError

#: Longest time plaintext waits in the sealing process before it is sealed and written, seconds.
SEAL_PERIOD_S: Final = 1.0
#: The FIFO's buffer (the most Linux allows an unprivileged process by default): the camera's writer does
#: not wait on a sealing process that is a moment late.
PIPE_BYTES: Final = 1 << 20
#: Bytes read from the FIFO at once.
READ_BYTES: Final = 256 * 1024
#: Nice value of the sealing process: it yields to the controller.
SEAL_NICE: Final = 10
#: Exit status of a sealing process that left its file cut short (the last chunk not sealed).
EXIT_UNFINISHED: Final = 3
_FINISH: Final = b"finish\n"
_READY: Final = b"ready\n"
_START_WAIT_S: Final = 15.0


class VideoSeal:
    """One encrypted recording in progress: the FIFO the camera writes, the sealing process, the file.

    Use :meth:`start`; then :meth:`finish` once the camera closed the video, or :meth:`abort` when the camera
    never began to write."""

    def __init__(self, process: asyncio.subprocess.Process, folder: Path, fifo: Path, target: Path) -> None:
        self._process = process
        self._folder = folder
        #: The FIFO the camera records into.
        self.fifo = fifo
        #: The encrypted video file.
        self.target = target

    @property
    def pid(self) -> int:
        """The sealing process."""
        return self._process.pid

    @classmethod
    async def start(cls, target: Path, key: bytes, *, period_s: float = SEAL_PERIOD_S) -> VideoSeal:
        """Make the FIFO and start the sealing process writing ``target`` (which must not exist) with the
        session-file ``key``. Raises :class:`SessionFileError` (one line) when the process cannot start or
        create the file."""
        target = Path(target)
        folder = Path(tempfile.mkdtemp(prefix="tosca-video-"))
        fifo = folder / target.name
        try:
            os.mkfifo(fifo, 0o600)
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "storage.video_seal",
                "--fifo",
                str(fifo),
                "--out",
                str(target),
                "--period",
                repr(float(period_s)),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        seal = cls(process, folder, fifo, target)
        try:
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write(key)
            await process.stdin.drain()
            async with asyncio.timeout(_START_WAIT_S):
                line = await process.stdout.readline()
            if line != _READY:
                raise SessionFileError(f"the video sealing process did not start: {await seal._reason()}")
        except BaseException:
            await seal.abort()
            raise
        return seal

    async def _reason(self) -> str:
        process = self._process
        with contextlib.suppress(TimeoutError, ProcessLookupError):
            async with asyncio.timeout(2.0):
                await process.wait()
        text = b""
        if process.stderr is not None and process.returncode is not None:
            text = await process.stderr.read()
        lines = text.decode("utf-8", "replace").strip().splitlines()
        return lines[-1] if lines else f"exit status {process.returncode}"

    def _release_writer(self) -> None:
        """Let a camera waiting to open the FIFO (no reader left) open it and fail, instead of waiting on."""
        with contextlib.suppress(OSError):
            os.close(os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK))

    def _remove_fifo(self) -> None:
        shutil.rmtree(self._folder, ignore_errors=True)

    async def finish(self, *, complete: bool = True, timeout_s: float = 10.0) -> bool:
        """After the camera closed the video: seal the last chunk (``complete``) or leave the file cut short
        (the recording ended on an error); wait for the process and remove the FIFO. True when the file is
        complete. A process that does not end within ``timeout_s`` is killed (the file is then cut short)."""
        process = self._process
        try:
            if process.stdin is not None and not process.stdin.is_closing():
                with contextlib.suppress(ConnectionError):
                    if complete:
                        process.stdin.write(_FINISH)
                        await process.stdin.drain()
                    process.stdin.close()
            try:
                async with asyncio.timeout(timeout_s):
                    code = await process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                self._release_writer()
                code = await process.wait()
        finally:
            self._remove_fifo()
        return code == 0

    async def abort(self) -> None:
        """The camera never recorded: stop the process, remove the FIFO and the file (it holds no video)."""
        process = self._process
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        self._release_writer()
        await process.wait()
        self._remove_fifo()
        with contextlib.suppress(OSError):
            if self.target.stat().st_size <= HEADER_BYTES:
                self.target.unlink()


def _read_exact(fd: int, count: int) -> bytes:
    data = b""
    while len(data) < count:
        part = os.read(fd, count - len(data))
        if not part:
            break
        data += part
    return data


def seal_stream(fifo: Path, writer: EncryptingWriter, period_s: float) -> int:
    """Copy the FIFO into ``writer`` until the camera closes it, sealing and flushing to disk what was read
    at least every ``period_s`` seconds; return the bytes copied."""
    fd = os.open(fifo, os.O_RDONLY)  # waits for the camera to open its end
    copied = 0
    try:
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        sealed_at = time.monotonic()
        while True:
            left = period_s - (time.monotonic() - sealed_at)
            if poller.poll(max(0, int(left * 1000))):
                data = os.read(fd, READ_BYTES)
                if not data:
                    return copied
                writer.write(data)
                copied += len(data)
            if time.monotonic() - sealed_at >= period_s:
                writer.fsync()
                sealed_at = time.monotonic()
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Encrypt a session video read from a FIFO")
    parser.add_argument("--fifo", type=Path, required=True, help="the FIFO the camera records into")
    parser.add_argument("--out", type=Path, required=True, help="the encrypted file (must not exist)")
    parser.add_argument("--period", type=float, default=SEAL_PERIOD_S, help="seconds between sealed chunks")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    yield_to_the_controller(SEAL_NICE)
    key = _read_exact(sys.stdin.fileno(), 32)
    if len(key) != 32:
        print("no key was handed over", file=sys.stderr)
        return 2
    try:
        writer = EncryptingWriter(args.out, key)
    except OSError as exc:
        print(f"cannot create {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    del key
    sys.stdout.buffer.write(_READY)
    sys.stdout.flush()
    try:
        seal_stream(args.fifo, writer, args.period)
    except BaseException:
        writer.abandon()
        raise
    word = sys.stdin.buffer.readline()  # the controller's: finish, or nothing (an error, or it is gone)
    if word == _FINISH:
        writer.close()
        return 0
    writer.abandon()
    return EXIT_UNFINISHED


if __name__ == "__main__":
    sys.exit(main())
