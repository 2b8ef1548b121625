"""The words the controller and the console share: system states, severities, session statuses and the
operator's actions.

Each vocabulary is stated here once, as an enum whose values are the words on the wire and in the database;
the safety supervisor (:mod:`control.supervisor`) and the socket messages (:mod:`control.messages`) both use
these. The module imports nothing but the standard library, so a console may load it cheaply.
"""

from __future__ import annotations

import enum


class SystemState(enum.StrEnum):
    """The safety supervisor's state (the values are the ``safety_log.system_state`` words)."""

    IDLE = "idle"
    READY = "ready"
    ARMED = "armed"
    TREATING = "treating"
    PAUSED = "paused"
    FAULT = "fault"


class Severity(enum.StrEnum):
    """How serious a safety-log entry or an event is."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"
    EMERGENCY = "emergency"


class SessionStatus(enum.StrEnum):
    """A treatment session's status as its record and a snapshot show it."""

    IN_PROGRESS = "in_progress"
    PAUSED = "paused"
    COMPLETED = "completed"
    ABORTED = "aborted"


class OperatorAction(enum.StrEnum):
    """The operator's commands on an open session whose availability depends on the system state; the
    supervisor says which are permitted now (:func:`control.supervisor.permitted_actions`). The values are
    the commands' names on the wire."""

    ARM = "arm"
    PAUSE = "pause"
    RESUME = "resume"
    OVERRIDE_POWER = "override_power"
    ABORT = "abort"
    RESET_FAULT = "reset_fault"
