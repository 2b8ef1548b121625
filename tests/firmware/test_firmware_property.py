"""Property: no sequence of commands and pin changes raises LASER_ENABLE with the footpedal released, the
E-stop pressed, or the watchdog expired (the firmware on a simulated ATmega328P, 200 random sequences).

Each example starts a fresh board, plays a random sequence of host commands (arming, heartbeats, watchdog
timeouts, clears, streaming, garbage) and footpedal / E-stop changes (and short pulses of either) with random
pauses, and then checks the whole LASER_ENABLE record against the inputs, in cycles:

* from 20 us (320 cycles) after a footpedal release until the next press, LASER_ENABLE is low;
* from 20 us after an E-stop press until its release, LASER_ENABLE is low, and it rises again only after an
  ``ARM`` sent after that press;
* LASER_ENABLE is high only within the watchdog timeout in force of a ``WDT_RESET`` or ``WDT_CLEAR``, every
  command counted from when its last byte had reached the board at line rate (a new timeout from when the
  board can have obeyed it; a shorter one that puts the deadline in the past ends the span at the next tick);
* after a watchdog expiry it rises again only after a ``WDT_CLEAR`` and then an ``ARM``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from devices.sim.firmware import CYCLES_PER_MS, FirmwareBuild, LockstepBoard
from tests.firmware.support import BUDGET_CYCLES

BYTE_CYCLES = 16_000_000 * 10 // 115200
SLACK_CYCLES = 2 * CYCLES_PER_MS  # one tick of the 1 kHz timer, and margin
#: How much later than the line-rate estimate a command may be obeyed (UART pipeline, a busy main loop).
OBEYED_SLACK_CYCLES = 4 * CYCLES_PER_MS

COMMANDS = (
    "ARM",
    "DISARM",
    "WDT_RESET",
    "WDT_RESET",
    "WDT_CLEAR",
    "WDT_TIMEOUT:100",
    "WDT_TIMEOUT:150",
    "STREAM:200",
    "STREAM:0",
    "MOTOR_SPEED:200",
    "STATUS?",
    "GARBAGE",
)
PAUSES_MS = (0.0, 0.05, 0.3, 2.0, 12.0, 60.0, 130.0)

actions = st.lists(
    st.one_of(
        st.tuples(st.just("cmd"), st.sampled_from(COMMANDS)),
        st.tuples(st.just("pedal"), st.booleans()),
        st.tuples(st.just("estop"), st.booleans()),
        st.tuples(st.just("pulse"), st.sampled_from(["pedal", "estop"])),
        st.tuples(st.just("run"), st.sampled_from(PAUSES_MS)),
    ),
    min_size=4,
    max_size=18,
)


@dataclass
class Record:
    """What was done to the board, in cycles."""

    pedal: list[tuple[int, bool]] = field(default_factory=lambda: [(0, False)])
    estop: list[tuple[int, bool]] = field(default_factory=lambda: [(0, False)])
    #: (cycle written, cycle its last byte reached the board, command)
    commands: list[tuple[int, int, str]] = field(default_factory=list)
    line_free_at: int = 0
    timeout_ms: int = 1000

    def write(self, board: LockstepBoard, command: str, data: bytes) -> None:
        start = max(board.cycle, self.line_free_at)
        self.line_free_at = start + len(data) * BYTE_CYCLES
        self.commands.append((board.cycle, self.line_free_at, command))
        board.write(data)


def level_at(changes: list[tuple[int, bool]], cycle: int) -> bool:
    level = False
    for at, value in changes:
        if at <= cycle:
            level = value
    return level


def intervals_high(board: LockstepBoard, end: int) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    rose: int | None = None
    for change in board.changes:
        if change.kind != "L":
            continue
        if change.value and rose is None:
            rose = change.cycle
        elif not change.value and rose is not None:
            spans.append((rose, change.cycle))
            rose = None
    if rose is not None:
        spans.append((rose, end))
    return spans


def watchdog_deadline(cycle: int, on: int, feeds: list[int], timeouts: list[tuple[int, int]]) -> int:
    """The last cycle LASER_ENABLE may be high, as it stands at ``cycle``: the last feed that had reached the
    board (else the span's start ``on``) plus the timeout that may be in force, that is the last one the board
    has surely obeyed (1000 ms unless set) or a longer one that has arrived but may not be parsed yet. The
    deadline stays counted from the feed, so a shorter timeout that puts it in the past ends the span at the
    next tick after the board has obeyed it. ``timeouts``: (cycle its last byte arrived, ms), in order."""
    fed = max((d for d in feeds if d <= cycle), default=on)
    obeyed = [(d, ms) for d, ms in timeouts if d + OBEYED_SLACK_CYCLES <= cycle]
    arriving = [ms for d, ms in timeouts if d <= cycle < d + OBEYED_SLACK_CYCLES]
    in_force = obeyed[-1][1] if obeyed else 1000
    deadline = fed + max([in_force, *arriving]) * CYCLES_PER_MS + SLACK_CYCLES
    if obeyed:
        deadline = max(deadline, obeyed[-1][0] + OBEYED_SLACK_CYCLES + SLACK_CYCLES)
    return deadline


def check(board: LockstepBoard, record: Record) -> None:
    end = board.cycle
    spans = intervals_high(board, end)
    written = record.commands

    for on, off in spans:
        # Footpedal: low from 320 cycles after any release that comes before or inside the span.
        for at, pressed in record.pedal:
            if not pressed and at < off and not level_at(record.pedal, max(on, at + BUDGET_CYCLES)):
                assert off <= max(on, at + BUDGET_CYCLES), (
                    f"enable high {on}..{off} with the pedal released at {at}"
                )
        # E-stop: same for a press, and the span must follow an ARM sent after every earlier press.
        for at, pressed in record.estop:
            if pressed and at < off and level_at(record.estop, max(on, at + BUDGET_CYCLES)):
                assert off <= max(on, at + BUDGET_CYCLES), (
                    f"enable high {on}..{off} with the E-stop pressed at {at}"
                )
            if pressed and at + BUDGET_CYCLES < on:
                # Commands count from when their last byte reached the board (they queue behind one another).
                assert any(at < d + OBEYED_SLACK_CYCLES and w < on and c == "ARM" for w, d, c in written), (
                    f"re-enabled at {on} without ARM"
                )
        # Watchdog: high only up to the deadline of the last feed that had reached the board, all through the
        # span (the deadline changes only where a feed or a timeout arrives, or where a timeout is obeyed).
        feeds = [d for w, d, c in written if c in ("WDT_RESET", "WDT_CLEAR") and w < off]
        assert any(d <= on + BYTE_CYCLES * 20 for d in feeds), f"enable high at {on} with no heartbeat"
        timeouts = [(d, int(c.split(":")[1])) for _, d, c in written if c.startswith("WDT_TIMEOUT:")]
        changes = {off, *feeds, *(d for d, _ in timeouts), *(d + OBEYED_SLACK_CYCLES for d, _ in timeouts)}
        for cycle in sorted(c for c in changes if on < c <= off):
            deadline = watchdog_deadline(cycle - 1, on, feeds, timeouts)
            assert cycle <= deadline, f"enable high {on}..{off} past the watchdog deadline {deadline}"

    # After an expiry, a rise needs a WDT_CLEAR and then an ARM sent after the expiry.
    for cycle, text in board.sent:
        if text != "EVT:WDT:1":
            continue
        expired_no_earlier_than = cycle - 50 * CYCLES_PER_MS
        for on, _ in spans:
            if on > cycle:
                clears = [
                    d
                    for w, d, c in written
                    if c == "WDT_CLEAR" and expired_no_earlier_than < d + OBEYED_SLACK_CYCLES and w < on
                ]
                assert clears and any(
                    min(clears) < d + OBEYED_SLACK_CYCLES and w < on and c == "ARM" for w, d, c in written
                ), f"re-enabled at {on} after the watchdog expired without WDT_CLEAR and ARM"

    assert not board.crashed and not board.resets


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
# A shorter timeout written while the pedal is briefly released: the longer one rules until it has arrived.
@example(
    steps=[("cmd", "ARM"), ("run", 130.0), ("cmd", "WDT_TIMEOUT:100"), ("pulse", "pedal")],
    seed=0,
    timeout_ms=150,
    prearm=True,
)
@given(
    steps=actions,
    seed=st.integers(0, 2**16),
    timeout_ms=st.sampled_from([100, 150, 1000]),
    prearm=st.booleans(),
)
def test_laser_enable_never_high_when_it_must_not_be(
    firmware: FirmwareBuild, steps: list[tuple[str, object]], seed: int, timeout_ms: int, prearm: bool
) -> None:
    rng = random.Random(seed)
    record = Record()
    with LockstepBoard(firmware.elf, firmware.harness, seed=seed) as board:
        board.run(CYCLES_PER_MS + rng.randrange(1, 20_000))  # booted: its UART listens from about 10 us on
        # Start from a short watchdog timeout (most examples) and, in half of them, armed and fed with the
        # pedal down, so that expiries and releases are reached often.
        setup = [f"WDT_TIMEOUT:{timeout_ms}"] + (["WDT_RESET", "ARM"] if prearm else [])
        for command in setup:
            record.write(board, command, command.encode() + b"\n")
        board.run(record.line_free_at - board.cycle + 2 * OBEYED_SLACK_CYCLES)  # the setup is in and obeyed
        if prearm:
            record.pedal.append((board.pedal(True), True))
        for kind, arg in steps:
            if kind == "cmd":
                if arg == "GARBAGE":
                    record.write(
                        board, "GARBAGE", bytes(rng.randrange(256) for _ in range(rng.randrange(1, 90)))
                    )
                else:
                    record.write(board, str(arg), str(arg).encode() + b"\n")
            elif kind == "pedal":
                record.pedal.append((board.pedal(bool(arg)), bool(arg)))
            elif kind == "estop":
                record.estop.append((board.estop(bool(arg)), bool(arg)))
            elif kind == "pulse":
                # A short press of the E-stop, or a short release of the pedal, then back.
                if arg == "estop":
                    record.estop.append((board.estop(True), True))
                    board.run(rng.randrange(500, 8000))
                    record.estop.append((board.estop(False), False))
                else:
                    record.pedal.append((board.pedal(False), False))
                    board.run(rng.randrange(500, 8000))
                    record.pedal.append((board.pedal(True), True))
            else:
                assert isinstance(arg, float)
                board.run(round(arg * CYCLES_PER_MS) + rng.randrange(0, BYTE_CYCLES))
        board.run_ms(5)
        check(board, record)


def test_a_shorter_timeout_past_the_deadline_expires_the_watchdog_at_the_next_tick(
    firmware: FirmwareBuild,
) -> None:
    """Fed 130 ms ago with 150 ms in force, LASER_ENABLE stays high until ``WDT_TIMEOUT:100`` has reached the
    board, then falls at the next tick (the deadline, still counted from the feed, is already past)."""
    record = Record()
    with LockstepBoard(firmware.elf, firmware.harness) as board:
        board.run_ms(10)
        for command in ("WDT_TIMEOUT:150", "WDT_RESET", "ARM"):
            record.write(board, command, command.encode() + b"\n")
        board.run(record.line_free_at - board.cycle + OBEYED_SLACK_CYCLES)
        board.pedal(True)
        board.run_ms(130)
        assert board.enable, "LASER_ENABLE is not high 130 ms after the feed with 150 ms in force"
        written = board.cycle
        record.write(board, "WDT_TIMEOUT:100", b"WDT_TIMEOUT:100\n")
        arrived = record.line_free_at
        board.run(arrived - board.cycle - BYTE_CYCLES)
        assert board.enable, "LASER_ENABLE fell before the shorter timeout had reached the board"
        board.run(BYTE_CYCLES + SLACK_CYCLES)
        falls = [c.cycle for c in board.changes if c.kind == "L" and not c.value and c.cycle > written]
        assert not board.enable and falls and falls[0] <= arrived + SLACK_CYCLES, (
            f"LASER_ENABLE still high {board.cycle - arrived} cycles after WDT_TIMEOUT:100 arrived"
        )
        board.run_ms(5)
        assert "EVT:WDT:1" in [text for _, text in board.sent]
        assert board.query("STATUS?") == ["STATUS:ARMED=0,WDT=EXPIRED"]
