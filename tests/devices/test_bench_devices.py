"""The device round-trip benchmark runs end to end (few round trips) and reports every row."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_reports_every_round_trip() -> None:
    out = subprocess.run(
        [sys.executable, "tests/bench/bench_devices.py", "--count", "20", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    for name in ("pty echo (raw)", "laser *IDN?", "tec TEC:T?", "actuator EPOS=?", "safety GET_FOOTPEDAL"):
        row = rows[name]
        assert row["n"] == 20
        assert 0 < row["median_ms"] <= row["p99_ms"] <= row["max_ms"] < 1000
