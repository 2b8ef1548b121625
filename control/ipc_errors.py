"""What a client of the controller's sockets may catch: no controller, or a command refused.

Apart from :mod:`control.ipc.client` (which raises both) so that the console can name them before it loads
the socket protocol's messages, which it does only once its first screen is drawn.
"""

from __future__ import annotations


class ControllerUnavailable(ConnectionError):
    """No controller answers, or the connection to it died."""


class CommandFailed(Exception):
    """The controller answered a command with ``ok: false``; ``error`` is its reason."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error
