"""The controller process: devices, safety supervisor, protocol engine and recorder on one loop, behind two
sockets.

``tosca controller`` runs one :class:`Controller`; a console is a client of its sockets (``control.sock``
for the operator, ``observe.sock`` for engineers), and tests may run it in-process behind the same client.
The package is divided by what each part does:

- :mod:`control.controller.process`: :class:`Controller`, the wiring: start-up in order (the rig, laser
  output off and verified, first; the database; the safety board; the monitors and the sockets) and shutdown;
- :mod:`control.controller.monitors`: the polling loops and the supervisor's tick, which only report
  readings (the supervisor judges them);
- :mod:`control.controller.treatment`: a session's life, from opening to closing, and the pre-treatment
  checks;
- :mod:`control.controller.commands`: the socket commands, for whom and from which connection;
- :mod:`control.controller.snapshot`: what a console shows, built as a pure function of the state;
- :mod:`control.controller.ports`: the supervisor's laser and board ports over the rig's drivers;
- :mod:`control.controller.state`: the state those parts share.

One treatment session at a time; the safety decisions are the supervisor's (:mod:`control.supervisor`).
"""

from __future__ import annotations

from control.controller.process import CONTROL_SOCKET, OBSERVE_SOCKET, Controller
from control.controller.state import ActiveSession

__all__ = ["CONTROL_SOCKET", "OBSERVE_SOCKET", "ActiveSession", "Controller"]
