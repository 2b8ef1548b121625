"""The protocol catalog: the active protocols a technician can choose from, and a preview of each.

:meth:`ProtocolCatalog.active` lists every active protocol of the database that has an approved version,
with the summary of its newest approved version (type, total duration in seconds, highest power in watts,
number of steps, description, version number): only an approved version is used for treatment
(``control/protocol_approval.py``). With ``drafts`` (the simulated rig), a protocol whose newest draft or
submitted version is newer than its approved one (or that has no approved one) is listed a second time with
that version, marked ``draft``. A protocol
whose stored JSON no longer parses is still listed, with its error and no numbers, so one bad row never hides
the others. Each summary also carries the system limits it breaks (the system's maximum power, the active
laser calibration, the actuator's ring range): a protocol that breaks one would be refused when a session is
opened, and the console says so before the technician chooses it.

:meth:`ProtocolCatalog.preview` gives the step table (number, duration s, start and end power W, ramp,
ring mm) and the power curve as ``(t s, W)`` points: the corners of the compiled plan (each step's start and
end setpoint), which describe the piecewise-linear curve exactly with the fewest points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from control.protocol_approval import TRIAL_STATUSES
from control.protocols import (
    LimitsError,
    Plan,
    ProtocolError,
    ValidationLimits,
    compile_plan,
    load_limits,
    parse_protocol,
    protocol_type,
    validate_protocol,
)
from storage import Protocol, ProtocolVersion, StorageError

#: Where :attr:`ProtocolSummary.limit_problems` says the limits could not be read.
LIMITS_UNREADABLE: Final = "the system limits cannot be read"


class CatalogError(LookupError):
    """A protocol asked for by name is not in the catalog (absent or inactive)."""


@dataclass(frozen=True, slots=True)
class ProtocolSummary:
    """One active protocol as listed for choosing.

    Attributes:
        protocol_id: the row's id.
        name: the protocol's unique name.
        protocol_type: ``constant``, ``linear_ramp`` or ``multi_step`` as :func:`protocol_type` derives it
            from the steps (the stored column when the data does not parse).
        total_duration_s: length of the treatment, seconds (None when the data does not parse).
        max_power_w: highest setpoint, W (None when the data does not parse).
        step_count: number of steps (None when the data does not parse).
        description: the stored description ("" when there is none).
        version: the number of the version summarised (the newest approved one, or the draft tried).
        error: why the stored data does not parse (None when it does).
        limit_problems: each system limit the protocol breaks (empty when it may run).
    """

    protocol_id: int
    name: str
    protocol_type: str
    total_duration_s: float | None
    max_power_w: float | None
    step_count: int | None
    description: str
    version: int
    error: str | None = None
    limit_problems: tuple[str, ...] = ()
    draft: bool = False

    @property
    def usable(self) -> bool:
        """True when the protocol parses and breaks no system limit."""
        return self.error is None and not self.limit_problems


@dataclass(frozen=True, slots=True)
class StepRow:
    """One row of a protocol's step table: duration in seconds, powers in watts, ring diameter in mm."""

    number: int
    duration_s: float
    start_w: float
    end_w: float
    ramp_type: str
    ring_mm: float


@dataclass(frozen=True, slots=True)
class ProtocolPreview:
    """A protocol's summary, its step table and its power curve as ``(t s, W)`` points (empty when the
    stored data does not parse)."""

    summary: ProtocolSummary
    steps: tuple[StepRow, ...]
    curve: tuple[tuple[float, float], ...]


def power_curve(plan: Plan) -> tuple[tuple[float, float], ...]:
    """The plan's setpoint curve as ``(t s, W)`` corner points: each step's start and end power, so a
    change of power between steps shows as a vertical edge and a ramp as a sloped line."""
    points: list[tuple[float, float]] = []
    for step in plan.steps:
        points.append((step.start_s, step.power_at_elapsed(0.0)))
        points.append((step.end_s, step.power_at_elapsed(step.duration_s)))
    return tuple(points)


class ProtocolCatalog:
    """Reads the active protocols of the records database.

    Args:
        sessions: the session maker of the records database.
    """

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def active(self, *, drafts: bool = False) -> list[ProtocolSummary]:
        """Every active protocol with an approved version, by name, each with its summary or its error; with
        ``drafts`` also each newer draft, marked (see the module documentation)."""
        async with self._sessions() as session:
            rows = await self._rows(session, None, drafts)
        limits, limits_problem = await self._limits()
        return [self._summarise(row, version, limits, limits_problem)[0] for row, version in rows]

    async def preview(self, name: str, *, draft: bool = False) -> ProtocolPreview:
        """The summary, step table and power curve of the active protocol ``name`` (its newest approved
        version, or with ``draft`` its newest draft); CatalogError when no active protocol has that name and
        such a version."""
        async with self._sessions() as session:
            rows = [
                r for r in await self._rows(session, name, draft) if r[1].status != "approved" or not draft
            ]
        if not rows:
            kind = "draft" if draft else "approved"
            raise CatalogError(f"no active protocol named {name!r} with an {kind} version")
        limits, limits_problem = await self._limits()
        row, version = rows[-1]
        summary, plan = self._summarise(row, version, limits, limits_problem)
        if plan is None:
            return ProtocolPreview(summary=summary, steps=(), curve=())
        steps = tuple(
            StepRow(
                number=step.number,
                duration_s=step.duration_s,
                start_w=step.power_start_w,
                end_w=step.power_end_w,
                ramp_type=step.ramp,
                ring_mm=step.ring_size_mm,
            )
            for step in plan.steps
        )
        return ProtocolPreview(summary=summary, steps=steps, curve=power_curve(plan))

    @staticmethod
    async def _rows(
        session: AsyncSession, name: str | None, drafts: bool
    ) -> list[tuple[Protocol, ProtocolVersion]]:
        """Each active protocol with its newest approved version, and (``drafts``) its newest draft when
        that is newer, by name."""
        query = (
            select(Protocol, ProtocolVersion)
            .join(ProtocolVersion, ProtocolVersion.protocol_id == Protocol.protocol_id)
            .where(Protocol.is_active.is_(True))
            .where(ProtocolVersion.status.in_(("approved", *(TRIAL_STATUSES if drafts else ()))))
            .order_by(Protocol.protocol_name, ProtocolVersion.version)
        )
        if name is not None:
            query = query.where(Protocol.protocol_name == name)
        newest: dict[int, tuple[Protocol, ProtocolVersion | None, ProtocolVersion | None]] = {}
        for protocol, version in await session.execute(query):
            _p, approved, draft = newest.get(protocol.protocol_id, (protocol, None, None))
            if version.status == "approved":
                approved = version
            else:
                draft = version
            newest[protocol.protocol_id] = (protocol, approved, draft)
        found: list[tuple[Protocol, ProtocolVersion]] = []
        for protocol, approved, draft in newest.values():
            if approved is not None:
                found.append((protocol, approved))
            if draft is not None and (approved is None or draft.version > approved.version):
                found.append((protocol, draft))
        return found

    async def _limits(self) -> tuple[ValidationLimits | None, str | None]:
        try:
            return await load_limits(self._sessions), None
        except (LimitsError, StorageError) as exc:
            return None, f"{LIMITS_UNREADABLE}: {exc}"

    @staticmethod
    def _summarise(
        row: Protocol, chosen: ProtocolVersion, limits: ValidationLimits | None, limits_problem: str | None
    ) -> tuple[ProtocolSummary, Plan | None]:
        description = row.description or ""
        version = chosen.version
        draft = chosen.status != "approved"
        try:
            definition = parse_protocol(chosen.protocol_data)
        except ProtocolError as exc:
            broken = ProtocolSummary(
                protocol_id=row.protocol_id,
                name=row.protocol_name,
                protocol_type=row.protocol_type,
                total_duration_s=None,
                max_power_w=None,
                step_count=None,
                description=description,
                version=version,
                error="; ".join(exc.errors),
                draft=draft,
            )
            return broken, None
        plan = compile_plan(definition)
        if limits is not None:
            problems = tuple(validate_protocol(definition, limits))
        else:
            problems = (limits_problem,) if limits_problem is not None else ()
        summary = ProtocolSummary(
            protocol_id=row.protocol_id,
            name=row.protocol_name,
            protocol_type=protocol_type(definition),
            total_duration_s=plan.total_duration_s,
            max_power_w=plan.max_power_w,
            step_count=len(plan.steps),
            description=description,
            version=version,
            limit_problems=problems,
            draft=draft,
        )
        return summary, plan


__all__ = [
    "LIMITS_UNREADABLE",
    "CatalogError",
    "ProtocolCatalog",
    "ProtocolPreview",
    "ProtocolSummary",
    "StepRow",
    "power_curve",
]
