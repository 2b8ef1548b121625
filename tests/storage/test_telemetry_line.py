"""The telemetry line's schema: what the controller writes is what the review reads, and a line that does not
follow it is refused with the line and the reason."""

from __future__ import annotations

import json
import math

import pytest

from storage.telemetry import TelemetryError, encode_record
from storage.telemetry_line import KEYS, TelemetrySample, decode_sample

SAMPLE = TelemetrySample(
    t=12.345678,
    pd_v=1.234,
    p_w=2.0000049,
    cmd_w=2.00004,
    on=True,
    pedal=True,
    estop=False,
    vib_g=1.1,
    enable=True,
    state="treating",
    pos_um=1500.0,
)


def test_a_written_line_reads_back_as_the_sample_rounded_to_the_schemas_precision() -> None:
    line = encode_record(SAMPLE.encode())
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    back = decode_sample(line, "telemetry.jsonl line 1")
    assert back == TelemetrySample(
        t=12.3457,
        pd_v=1.234,
        p_w=2.0,
        cmd_w=2.0,
        on=True,
        pedal=True,
        estop=False,
        vib_g=1.1,
        enable=True,
        state="treating",
        pos_um=1500.0,
    )
    assert list(json.loads(line)) == list(KEYS)


def test_nulls_where_the_schema_allows_them_read_back_as_none() -> None:
    without = TelemetrySample(**{**SAMPLE.encode(), "p_w": None, "pos_um": None})
    back = decode_sample(encode_record(without.encode()), "line 1")
    assert (back.p_w, back.pos_um) == (None, None)


def _line(**changes: object) -> bytes:
    values = {**SAMPLE.encode(), **changes}
    return json.dumps({k: v for k, v in values.items() if v is not _DROP}).encode()


_DROP = object()


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b'{"t": 0.1, "cmd_w": ', "telemetry.jsonl line 7 is not valid JSON"),
        (b"[1, 2]", "telemetry.jsonl line 7 is not a JSON object"),
        (b'{"t": NaN}', "telemetry.jsonl line 7 is not valid JSON: NaN is not a finite number"),
        (_line(cmd_w=_DROP, p_w=_DROP), "telemetry.jsonl line 7 lacks 'p_w', 'cmd_w'"),
        (_line(colour="red"), "telemetry.jsonl line 7 has unknown 'colour'"),
        (_line(t="soon"), "telemetry.jsonl line 7: 't' must be a finite number, not 'soon'"),
        (_line(cmd_w=True), "telemetry.jsonl line 7: 'cmd_w' must be a finite number, not True"),
        (_line(p_w="2"), "telemetry.jsonl line 7: 'p_w' must be a finite number or null, not '2'"),
        (_line(on=1), "telemetry.jsonl line 7: 'on' must be true or false, not 1"),
        (_line(state=""), "telemetry.jsonl line 7: 'state' must be text, not ''"),
    ],
)
def test_a_malformed_line_is_refused_with_where_and_why(line: bytes, reason: str) -> None:
    with pytest.raises(TelemetryError) as caught:
        decode_sample(line, "telemetry.jsonl line 7")
    assert str(caught.value).startswith(reason)


def test_a_non_finite_sample_is_refused_when_written() -> None:
    bad = TelemetrySample(**{**SAMPLE.encode(), "pd_v": math.inf})
    with pytest.raises(ValueError, match="'pd_v' is not a finite number"):
        encode_record(bad.encode())
