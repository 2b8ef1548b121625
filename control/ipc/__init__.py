"""The controller's two Unix sockets: :mod:`control.ipc.server` runs in the controller process,
:mod:`control.ipc.client` in a console (or a script) that talks to it.

What both ends share is here: how many pushed events may wait for one client, and how a stream is closed.
This module loads nothing but asyncio, so the console may import the client without the server.
"""

from __future__ import annotations

import asyncio

#: Events waiting for one client beyond this many drop the oldest (on either end).
EVENT_QUEUE_LIMIT = 1000


async def close_writer(writer: asyncio.StreamWriter, flush_timeout_s: float = 1.0) -> None:
    """Close a stream, letting queued bytes go out for at most ``flush_timeout_s`` seconds, then abort it (a
    peer that stopped reading cannot hold the close up)."""
    writer.close()
    try:
        async with asyncio.timeout(flush_timeout_s):
            await writer.wait_closed()
    except TimeoutError:
        writer.transport.abort()
    except (OSError, RuntimeError):
        return
