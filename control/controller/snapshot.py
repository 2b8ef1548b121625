"""The snapshot a console shows, built from the controller's state as a pure function.

:func:`build_snapshot` reads the supervisor, the open session, who holds it and the device figures, and
changes none of them; the controller numbers the snapshots and publishes them. The figures that judge safety
(the state, the terms, the photodiode deviation, the permitted actions) are the supervisor's own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING

from control import messages as msg
from control.authority import MAX_KEY_FAILURES, Authority
from control.calibration import CalibrationSet
from control.controller.monitors import Readouts
from control.supervisor import SafetySupervisor, SystemState
from control.vocabulary import SessionStatus
from devices.rig import DeviceHealth

if TYPE_CHECKING:
    from control.controller.state import ActiveSession


def build_snapshot(
    *,
    seq: int,
    now: float,
    wall_now: float,
    sim: bool,
    supervisor: SafetySupervisor,
    session: ActiveSession | None,
    authority: Authority,
    readouts: Readouts,
    calibrations: CalibrationSet | None,
    health: Mapping[str, DeviceHealth],
    last_session_id: int | None,
    aiming_beam: bool = False,
) -> msg.Snapshot:
    """Everything a console shows at ``now`` (the monotonic clock; ``wall_now`` is the wall clock at the
    same moment, for the time of a latched fault)."""
    sup = supervisor
    measured = sup.measured_power_w()
    terms = sup.terms(now)
    session_view = None if session is None else _session_view(sup, session, authority, now)
    measured_ring = None
    if calibrations is not None and readouts.position_um is not None:
        with contextlib.suppress(ValueError):
            measured_ring = calibrations.position_to_ring_mm(readouts.position_um)
    fault = sup.fault
    fault_view = None
    if fault is not None:
        fault_view = msg.FaultView(
            what=fault.what,
            action=fault.action,
            how_to_reset=fault.how_to_reset,
            cause_cleared=fault.term is None or terms[fault.term].ok,
            at=datetime.fromtimestamp(wall_now - (now - fault.at)).isoformat(timespec="seconds"),
        )
    return msg.Snapshot(
        seq=seq,
        time_s=now,
        state=sup.state,
        emitting=sup.output_commanded_on and sup.state is SystemState.TREATING,
        sim=sim,
        session=session_view,
        laser=msg.LaserView(
            commanded_w=sup.commanded_w,
            measured_w=measured,
            photodiode_v=sup.readings.photodiode_v,
            output_on=bool(sup.readings.laser_output_on),
            current_ma=readouts.current_ma,
            deviation_percent=sup.photodiode_deviation_percent(measured),
        ),
        ring=msg.RingView(
            commanded_mm=session.engine.ring_mm if session else None,
            measured_mm=measured_ring,
            position_um=readouts.position_um,
        ),
        interlocks=[
            msg.InterlockView(name=t.term.value, ok=t.ok, value=t.value, detail=t.detail)
            for t in terms.values()
        ],
        devices=[
            msg.DeviceView(name=h.name, state=h.state, identity=h.identity, error=h.last_error)
            for h in health.values()
        ],
        fault=fault_view,
        warnings=list(sup.warnings[-5:]),
        actions=sup.permitted_actions(),
        last_session_id=last_session_id,
        aiming_beam=aiming_beam,
    )


def _session_view(
    sup: SafetySupervisor, session: ActiveSession, auth: Authority, now: float
) -> msg.SessionView:
    """The open session: its record, its clocks and step, who holds it and what leaving its pause needs."""
    progress = session.engine.progress
    step_view = None
    if progress is not None:
        step_view = msg.StepView(
            number=progress.number,
            of=progress.of,
            elapsed_s=progress.elapsed_s,
            duration_s=progress.duration_s,
            power_start_w=progress.power_start_w,
            power_end_w=progress.power_end_w,
            ramp=progress.ramp,
            ring_size_mm=progress.ring_size_mm,
        )
    paused = sup.state in (SystemState.PAUSED, SystemState.FAULT)
    return msg.SessionView(
        session_id=session.opened.session_id,
        subject_code=session.opened.subject_code,
        protocol_name=session.opened.protocol_name,
        technician=session.opened.technician,
        status=SessionStatus.PAUSED if paused else SessionStatus.IN_PROGRESS,
        clock_s=now - session.started_mono,
        treating_s=sup.treating_seconds(now),
        delivered_energy_j=session.summary.energy_j,
        step=step_view,
        max_override_w=session.max_override_w,
        total_duration_s=session.plan.total_duration_s,
        expected_energy_j=session.plan.expected_energy_j,
        operator=auth.operator.username if auth.operator is not None else session.opened.username,
        held_by_connection=None if auth.in_process else auth.holder,
        resume_needs_key=sup.state is SystemState.PAUSED and auth.resume_needs_key,
        key_failures=auth.key_failures,
        key_failures_allowed=MAX_KEY_FAILURES,
        protocol_version=session.opened.protocol_version,
        protocol_status=session.opened.protocol_status,
    )
