"""Helpers for the firmware tests: arming a board in lock-step, and measuring an edge's reaction."""

from __future__ import annotations

from devices.sim.firmware import LockstepBoard

#: The goal for an input edge to LASER_ENABLE low: 20 microseconds at 16 MHz.
BUDGET_CYCLES = 320


def arm_and_press(board: LockstepBoard) -> None:
    """Feed the watchdog, arm and press the footpedal; LASER_ENABLE must then be high."""
    assert board.query("WDT_RESET") == ["OK:WDT_RESET"]
    assert board.query("ARM") == ["OK:ARM"]
    board.pedal(True)
    board.run(2000)
    assert board.enable, "LASER_ENABLE did not rise with the board armed, fed and the pedal down"
    board.run_ms(8)  # the push lines of the press are out


def fall_after(board: LockstepBoard, edge_cycle: int, limit_cycles: int = 4000) -> int:
    """Run until LASER_ENABLE falls after ``edge_cycle``; returns the cycles from the edge to the fall."""
    board.run(limit_cycles)
    falls = [c.cycle for c in board.changes if c.kind == "L" and c.value == 0 and c.cycle >= edge_cycle]
    assert falls, f"LASER_ENABLE did not fall within {limit_cycles} cycles of the edge"
    return falls[0] - edge_cycle
