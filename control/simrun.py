"""A whole treatment session on the simulated rig, headless: ``tosca sim run``.

docs/architecture.md, "Command line". The controller runs in this process on the simulated rig and records the
session like any other (session row, treatment events, safety log, telemetry file). A scripted operator arms
with the technician's password once every pre-check passes, then holds the footpedal down from the start of
treatment unless the script says otherwise. Script lines are ``<seconds> <simulator command>`` with seconds
counted from the start of treatment; blank lines and ``#`` comments are ignored.

Three script lines are the operator's imaging keys rather than simulator commands, carried out as the
console's are and recorded the same way (docs/imaging.md): ``<seconds> snapshot`` saves the camera's newest
frame as a snapshot pair of the session (two ``snapshot`` recordings and an ``image_captured`` event, saved in
the background: the script goes on meanwhile, and the run waits for it before it ends), and
``<seconds> aim on`` / ``<seconds> aim off`` switch the aiming beam (a ``user_action`` event). Each says how
it ended on the output; a refusal (no image to take, a snapshot still being saved) is said and the run goes
on.

The person named by ``--user`` proves who they are first: the password is checked like a login (refused for a
wrong password, a locked or a deactivated account, and for a role that does not treat) before the session
is opened, and again as key control when arming.

A protocol named by its name runs its newest approved version (refused when it has none), or with ``draft``
its newest draft. A protocol file is stored as the next version of the protocol named by the file's stem and
tried as a draft (unless it is that protocol's newest approved version): that is how an author tries a
protocol. A draft run is said so on the output and recorded so in the session's notes and audit row.

The run ends when the protocol completes (exit 0) or when it is aborted or faulted (exit 1, with the reason).
A fault is never reset by the script: the session is closed as aborted with the fault's description.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from control.accounts import HashingParameters
from control.authority import SESSION_ROLES, Person
from control.controller import Controller
from control.controller.imaging import snapshot_words
from control.protocol_approval import TRIAL_STATUSES
from control.protocols import LimitsError, ProtocolError, check_protocol, load_limits, protocol_type
from control.supervisor import Refused, SystemState
from storage.repositories import ProtocolsRepository

#: Longest wait for every pre-check to pass before arming, s.
PRECHECK_WAIT_S = 15.0
#: Simulator command words the script may use (docs/devices.md, "The simulated rig").
SCRIPT_VERBS = frozenset(
    {
        "pedal",
        "estop",
        "smoothing",
        "photodiode",
        "laser",
        "tec",
        "actuator",
        "unplug",
        "replug",
        "garbage",
        "stall",
        "camera",
    }
)

#: The operator's imaging keys a script may use (not simulator commands).
OPERATOR_VERBS = frozenset({"snapshot", "aim"})


class ScriptError(ValueError):
    """A script line that cannot be used; the message names the line."""


@dataclass(frozen=True)
class ScriptLine:
    """One scripted simulator command at ``at_s`` seconds from the start of treatment."""

    at_s: float
    command: str
    line_no: int

    @property
    def operator_action(self) -> bool:
        """Whether the line is one of the operator's imaging keys (:data:`OPERATOR_VERBS`)."""
        return self.command.split()[0].lower() in OPERATOR_VERBS


def parse_script(text: str) -> list[ScriptLine]:
    """Parse a script; every line is ``<seconds> <command>``. Raises ScriptError naming the first bad line."""
    lines: list[ScriptLine] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        head, _, command = line.partition(" ")
        try:
            at = float(head)
        except ValueError:
            raise ScriptError(f"script line {number}: {head!r} is not a time in seconds") from None
        if not math.isfinite(at) or at < 0:
            raise ScriptError(f"script line {number}: time must be a finite number >= 0, got {head}")
        command = " ".join(command.split())
        if not command:
            raise ScriptError(f"script line {number}: no simulator command after the time")
        words = command.lower().split()
        if words[0] in OPERATOR_VERBS:
            if words[0] == "snapshot" and len(words) != 1:
                raise ScriptError(f"script line {number}: 'snapshot' takes nothing after it")
            if words[0] == "aim" and words[1:] not in (["on"], ["off"]):
                raise ScriptError(f"script line {number}: 'aim' needs 'on' or 'off'")
            command = " ".join(words)
        elif words[0] not in SCRIPT_VERBS:
            raise ScriptError(f"script line {number}: unknown simulator command {command.split()[0]!r}")
        lines.append(ScriptLine(at, command, number))
    return sorted(lines, key=lambda item: (item.at_s, item.line_no))


@dataclass(frozen=True)
class SimRunResult:
    """How the run ended, and the session's summary as recorded."""

    exit_code: int
    session_id: int | None
    status: str
    reason: str | None
    summary: dict[str, Any]


async def _ensure_protocol(controller: Controller, protocol: str) -> tuple[str, bool]:
    """A protocol name in the database, or a JSON file (added, or a new version, under the file's stem), and
    whether it names a file. A file is tried as a draft unless its text is the newest approved version's."""
    path = Path(protocol)
    if not await asyncio.to_thread(path.is_file):
        return protocol, False
    try:
        text = await asyncio.to_thread(path.read_text, encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise Refused(f"cannot read {path}: {exc}") from None
    try:
        limits = await load_limits(controller.db)
    except LimitsError as exc:
        raise Refused(f"cannot read the system's limits: {exc}") from None
    try:
        defn = check_protocol(text, limits).definition
    except ProtocolError as exc:
        raise Refused(f"{path}: " + "; ".join(exc.errors)) from None
    name = path.stem
    async with controller.db() as db, db.begin():
        repo = ProtocolsRepository(db)
        existing = await repo.get_by_name(name)
        if existing is None:
            await repo.add(name, protocol_type(defn), text, description=f"from {path.name}")
            return name, True
        versions = await repo.versions(existing.protocol_id)
        newest = versions[-1] if versions else None
        if newest is not None and newest.protocol_data == text and newest.status == "approved":
            return name, False
        if newest is None or newest.protocol_data != text or newest.status not in TRIAL_STATUSES:
            await repo.add_version(existing.protocol_id, text, change_summary=f"from {path.name}")
    return name, True


async def _operator_action(
    controller: Controller,
    command: str,
    username: str,
    now: float,
    say: Callable[[str], None],
    saving: list[asyncio.Task[None]],
) -> None:
    """One of the operator's imaging keys from the script, for ``username``, as the console's."""
    if command == "snapshot":
        if any(not task.done() for task in saving):
            say(f"{now:7.2f} s  snapshot refused: a snapshot is being saved: wait for it to finish")
            return

        async def save() -> None:
            try:
                taken = await controller.take_snapshot(by=username)
            except Refused as exc:
                say(f"{now:7.2f} s  snapshot refused: {exc}")
            else:
                say(f"{now:7.2f} s  {snapshot_words(taken)}")

        saving.append(asyncio.get_running_loop().create_task(save(), name="script-snapshot"))
        return
    on = command == "aim on"
    try:
        state = await controller.set_aiming_beam(on, by=username)
    except Refused as exc:
        say(f"{now:7.2f} s  aiming beam refused: {exc}")
        return
    say(f"{now:7.2f} s  aiming beam {'on' if state.on else 'off'}")


async def run_simulated_session(
    data_dir: Path,
    *,
    protocol: str,
    subject_code: str,
    username: str,
    password: str,
    script: list[ScriptLine],
    hashing: HashingParameters | None = None,
    say: Callable[[str], None] = print,
    on_started: Callable[[Controller], None] | None = None,
    draft: bool = False,
) -> SimRunResult:
    """Run one session on a fresh simulated rig and return how it ended (see the module documentation)."""
    controller = Controller(data_dir, sim=True, hashing=hashing, terminal="sim-run", serve=False)
    await controller.start()
    try:
        if on_started is not None:
            on_started(controller)
        login = await controller.accounts.login(username, password, context="sim_run")
        if not login.ok or login.user is None:
            raise Refused(f"{username}: {login.message}")
        user = login.user
        if user.role not in SESSION_ROLES:
            raise Refused(f"{username} is {user.role}: only a technician or an admin opens a session")
        name, from_file = await _ensure_protocol(controller, protocol)
        trial = draft or from_file
        if trial:
            say(f"protocol {name!r}: trying its newest DRAFT version on the simulated rig (not approved)")
        opened = await controller.open_session(
            subject_code=subject_code,
            username=user.username,
            protocol_name=name,
            create_subject=True,
            by_person=Person(user.tech_id, user.username, user.full_name, user.role),
            draft=trial,
        )
        session_id = opened.session_id
        say(
            f"session {session_id}: {opened.subject_code}, protocol {opened.protocol_name!r}, "
            f"{opened.total_duration_s:g} s, {opened.expected_energy_j:.1f} J expected"
        )
        await controller.wait_prechecks(PRECHECK_WAIT_S)
        await controller.arm(password)
        assert controller.sim_rig is not None
        started = time.monotonic()
        if not (script and script[0].at_s == 0 and script[0].command.lower() == "pedal up"):
            controller.sim_rig.command("pedal down")
        pending = list(script)
        saving: list[asyncio.Task[None]] = []
        while controller.session is not None:
            if controller.supervisor.state is SystemState.FAULT:
                fault = controller.supervisor.fault
                reason = f"fault: {fault.what if fault else 'unknown'}"
                await controller.abort(reason)
                break
            now = time.monotonic() - started
            while pending and pending[0].at_s <= now:
                line = pending.pop(0)
                if line.operator_action:
                    await _operator_action(controller, line.command, user.username, now, say, saving)
                    continue
                reply = controller.sim_rig.command(line.command)
                say(f"{now:7.2f} s  {reply}")
            await asyncio.sleep(0.01)
        if saving:
            await asyncio.gather(*saving)
        summary = await controller.sessions.summary_of(session_id)
    finally:
        await controller.close()
    status = str(summary.get("status"))
    abort_reason = summary.get("abort_reason")
    return SimRunResult(
        0 if status == "completed" else 1,
        session_id,
        status,
        None if abort_reason is None else str(abort_reason),
        summary,
    )
