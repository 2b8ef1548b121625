"""Simulators of the rig's devices, speaking the same bytes as the real parts over ptys.

- :mod:`devices.sim.model`: :class:`PhysicalModel`, the physics every simulator shares;
- :mod:`devices.sim.pty`: :class:`PtyDevice`, one simulated device on its own pty, and the
  :class:`LineHandler` protocol a device's firmware model implements;
- :mod:`devices.sim.laser`, :mod:`devices.sim.tec`: the Arroyo-style laser driver and TEC;
- :mod:`devices.sim.rig`: :class:`SimRig`, the whole simulated rig and its command language.

Submodules are imported on use so that importing one simulator does not pull in the others.
"""

from __future__ import annotations

from devices.sim.model import PhysicalModel
from devices.sim.pty import LineHandler, PtyDevice

__all__ = ["LineHandler", "PhysicalModel", "PtyDevice"]
