"""Device drivers of the TOSCA rig: async, one module per device, over a shared serial line transport.

- :mod:`devices.transport`: :class:`LineTransport`, link states and link errors;
- :mod:`devices.laser`: :class:`LaserDriver` (Arroyo LaserSource style), Arroyo error codes and identities;
- :mod:`devices.tec`: :class:`TecDriver` (Arroyo TECSource style);
- :mod:`devices.actuator`, :mod:`devices.safety`, :mod:`devices.camera`: the other devices;
- :mod:`devices.rig`: :class:`~devices.rig.Rig`, every device of a configuration opened together under the rig
  lock, laser output off first (imported on use: it pulls in the camera stack);
- :mod:`devices.sim`: the simulators and their shared physical model.

Nothing here imports ``control`` or ``tui``.
"""

from __future__ import annotations

from devices.laser import (
    ArroyoError,
    DeviceErrorCode,
    Identity,
    LaserCondition,
    LaserDriver,
    OutOfRange,
    VerifyError,
)
from devices.tec import TecDriver
from devices.transport import BadReply, LineTransport, LinkDown, LinkError, LinkState, LinkTimeout

__all__ = [
    "ArroyoError",
    "BadReply",
    "DeviceErrorCode",
    "Identity",
    "LaserCondition",
    "LaserDriver",
    "LineTransport",
    "LinkDown",
    "LinkError",
    "LinkState",
    "LinkTimeout",
    "OutOfRange",
    "TecDriver",
    "VerifyError",
]
