"""The protocol catalog against a real migrated database holding the shipped library."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from control.catalog import CatalogError, ProtocolCatalog, StepRow, power_curve
from control.protocol_approval import approve_as_system
from control.protocols import compile_plan, install_library_protocols, load_library
from storage import Protocol, ProtocolVersion
from storage.repositories import ConfigRepository, ProtocolsRepository

SEED = "Seed example (60 s at 5 W, 30 s ramp to 8 W)"
TAPER = "Warm-up, plateau, wide ring, taper (140 s)"


@pytest.fixture
async def catalog(sessions: async_sessionmaker[AsyncSession]) -> ProtocolCatalog:
    await install_library_protocols(sessions)
    return ProtocolCatalog(sessions)


async def test_active_lists_the_library_with_summaries(catalog: ProtocolCatalog) -> None:
    listed = await catalog.active()
    assert [s.name for s in listed] == sorted(item.name for item in load_library())
    by_name = {s.name: s for s in listed}
    seed = by_name[SEED]
    assert (seed.protocol_type, seed.total_duration_s, seed.max_power_w, seed.step_count, seed.version) == (
        "multi_step",
        90.0,
        8.0,
        2,
        1,
    )
    assert seed.description.startswith("The reference protocol")
    assert seed.error is None and seed.limit_problems == () and seed.usable
    constant = by_name["Constant 3 W, 120 s, 3.0 mm ring"]
    assert (constant.protocol_type, constant.total_duration_s, constant.max_power_w) == (
        "constant",
        120.0,
        3.0,
    )
    ramp = by_name["Linear ramp 2 W to 6 W over 90 s, 3.5 mm ring"]
    assert (ramp.protocol_type, ramp.max_power_w, ramp.step_count) == ("linear_ramp", 6.0, 1)


async def test_preview_gives_the_step_table_and_the_exact_curve(catalog: ProtocolCatalog) -> None:
    preview = await catalog.preview(SEED)
    assert preview.steps == (
        StepRow(number=1, duration_s=60.0, start_w=5.0, end_w=5.0, ramp_type="constant", ring_mm=3.0),
        StepRow(number=2, duration_s=30.0, start_w=5.0, end_w=8.0, ramp_type="linear", ring_mm=3.5),
    )
    assert preview.curve == ((0.0, 5.0), (60.0, 5.0), (60.0, 5.0), (90.0, 8.0))
    taper = await catalog.preview(TAPER)
    assert [step.number for step in taper.steps] == [1, 2, 3, 4]
    # Between the corners the curve is the plan's own setpoint line.
    plan = compile_plan(next(p for p in load_library() if p.name == TAPER).definition)
    corners = power_curve(plan)
    assert corners == taper.curve
    for (t0, w0), (t1, w1) in zip(corners[::2], corners[1::2], strict=True):
        middle = (t0 + t1) / 2
        assert plan.power_at(middle) == pytest.approx((w0 + w1) / 2)


async def test_a_protocol_whose_data_no_longer_parses_is_listed_with_its_error(
    catalog: ProtocolCatalog, sessions: async_sessionmaker[AsyncSession]
) -> None:
    async with sessions() as session, session.begin():
        seed = await ProtocolsRepository(session).get_by_name(SEED)
        assert seed is not None
        # A version written outside the console, approved, whose JSON is cut short.
        session.add(
            ProtocolVersion(
                protocol_id=seed.protocol_id, version=2, protocol_data='{"version": "1.0"', status="approved"
            )
        )
        strong = await ProtocolsRepository(session).add(
            "Too strong", "constant", json.dumps({"version": "1.0", "steps": [], "extra": 1})
        )
        await approve_as_system(session, strong.protocol_id)
    listed = {s.name: s for s in await catalog.active()}
    assert len(listed) == len(load_library()) + 1
    broken = listed[SEED]
    assert broken.error is not None and broken.error.startswith("invalid JSON at line 1")
    assert (broken.total_duration_s, broken.max_power_w, broken.step_count) == (None, None, None)
    assert broken.protocol_type == "multi_step"  # the stored column
    assert not broken.usable
    other = listed["Too strong"]
    assert other.error is not None and "extra: unknown key" in other.error
    preview = await catalog.preview(SEED)
    assert preview.steps == () and preview.curve == () and preview.summary.error == broken.error
    assert listed[TAPER].error is None


async def test_limits_the_system_no_longer_allows_are_named(
    catalog: ProtocolCatalog, sessions: async_sessionmaker[AsyncSession]
) -> None:
    async with sessions() as session, session.begin():
        await ConfigRepository(session).set("max_laser_power_watts", 5.0, modified_by=None)
    listed = {s.name: s for s in await catalog.active()}
    seed = listed[SEED]
    assert seed.error is None and not seed.usable
    assert seed.limit_problems == (
        "steps[1].power_end_watts: 8.0 W exceeds the system limit max_laser_power_watts (5.0 W)",
    )
    assert listed["Constant 3 W, 120 s, 3.0 mm ring"].usable


async def test_inactive_and_unknown_protocols_are_not_offered(
    catalog: ProtocolCatalog, sessions: async_sessionmaker[AsyncSession]
) -> None:
    async with sessions() as session, session.begin():
        await session.execute(update(Protocol).where(Protocol.protocol_name == TAPER).values(is_active=False))
    assert TAPER not in [s.name for s in await catalog.active()]
    with pytest.raises(CatalogError, match="no active protocol named"):
        await catalog.preview(TAPER)
    with pytest.raises(CatalogError, match="'Nothing'"):
        await catalog.preview("Nothing")


async def test_the_newest_approved_version_is_offered_and_a_draft_only_on_request(
    catalog: ProtocolCatalog, sessions: async_sessionmaker[AsyncSession]
) -> None:
    stronger = json.dumps(
        {
            "version": "1.0",
            "steps": [
                {
                    "step_number": 1,
                    "duration_seconds": 10,
                    "power_start_watts": 6.0,
                    "power_end_watts": 6.0,
                    "ring_size_mm": 3.0,
                    "ramp_type": "constant",
                }
            ],
            "safety_limits": {"max_power_watts": 7.0, "max_duration_seconds": 60},
        }
    )
    async with sessions() as session, session.begin():
        repo = ProtocolsRepository(session)
        row = await repo.get_by_name(SEED)
        assert row is not None
        await repo.add_version(row.protocol_id, stronger, change_summary="a draft")
        fresh = await repo.add("Only a draft", "constant", stronger)
    # The technician is offered version 1 with its own data; the draft and the draft-only protocol are not.
    listed = {s.name: s for s in await catalog.active()}
    assert (listed[SEED].version, listed[SEED].total_duration_s, listed[SEED].draft) == (1, 90.0, False)
    assert "Only a draft" not in listed
    with pytest.raises(CatalogError, match="approved"):
        await catalog.preview("Only a draft")
    # On the simulated rig the drafts are listed as well, marked.
    trial = [(s.name, s.version, s.draft, s.total_duration_s) for s in await catalog.active(drafts=True)]
    assert ("Only a draft", 1, True, 10.0) in trial
    assert (SEED, 1, False, 90.0) in trial and (SEED, 2, True, 10.0) in trial
    assert (await catalog.preview(SEED, draft=True)).summary.version == 2
    async with sessions() as session, session.begin():
        await approve_as_system(session, row.protocol_id)
        await approve_as_system(session, fresh.protocol_id)
    listed = {s.name: s for s in await catalog.active()}
    assert (listed[SEED].version, listed[SEED].total_duration_s) == (2, 10.0)
    assert listed["Only a draft"].version == 1
