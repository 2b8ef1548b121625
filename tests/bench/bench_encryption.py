"""Encryption-at-rest benchmark: opening an encrypted database, and the seed's six common queries on an
encrypted database against the same database in plain text.

Run from the project root::

    python tests/bench/bench_encryption.py          # 2,000 subjects, 50,000 sessions, 5,000,000 events
    python tests/bench/bench_encryption.py --quick  # ten times fewer rows

(a) Opening: the time from nothing to the first row of a query on a new connection (SQLCipher with the raw
    key of a key file, :func:`storage.crypto_db.connect`), reading the key file included; median and p95
    of several hundred opens (goal < 10 ms), beside the same for the plain file.
(b) The six common queries (``tests/bench/bench_storage.py``, which generates the database and caches it
    under /tmp) on a plain and an encrypted copy (both written by SQLCipher's export, so that both have the
    same compact page layout), through the repositories on the async engine and as raw SQL: p50 in ms of
    each (plain and encrypted take turns for ``--rounds`` rounds; the median of the rounds is shown), and the
    ratio plain / encrypted of their summed p50 (1.0: as fast; goal >= 0.8).
(c) Appending chained ``treatment_events`` (``TreatmentEventsRepository.add_many`` on the async engine, one
    commit per batch of 100, as the recorder does) into a fresh plain and a fresh encrypted database, batch
    by batch in turn: median ms per batch and events/s of each, and their ratio (no goal set; shown so the
    cost on the treatment's write path is known).
(d) ``tosca audit verify`` (:func:`storage.chain_verify.verify_database`) over the chained events that the
    append path writes in ``--verify-seconds``, on the plain database and on an encrypted copy of it: CPU
    time (median of three), rows/s, and what that rate gives for 5,000,000 rows (the chain's goal: < 30 s).

This is a command that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
for entry in (ROOT, ROOT / "tests" / "bench"):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

from bench_chain import START, event, generate  # noqa: E402
from bench_storage import (  # noqa: E402
    CACHE_DIR,
    DEVICE_TYPES,
    SEED_QUERIES,
    _generate,
    _raw_timings,
    _repo_timings,
    _template,
)

from storage import DataDir, create_engine, session_factory  # noqa: E402
from storage.chain_verify import verify_database  # noqa: E402
from storage.crypto_db import (  # noqa: E402
    KEY_FILE_ENV,
    connect,
    create_key_file,
    export_to,
    open_for_export,
    read_key_file,
    sqlcipher_version,
)
from storage.crypto_setup import encrypt_database  # noqa: E402
from storage.maintenance import head_revision, upgrade  # noqa: E402
from storage.models import Subject, TechUser, TreatmentSession  # noqa: E402
from storage.repositories import TreatmentEventsRepository  # noqa: E402


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered) * 1000, p95 * 1000


def _open_times(path: Path, opens: int) -> tuple[float, float]:
    samples = []
    for _ in range(opens):
        started = time.perf_counter()
        connection = connect(path)
        connection.execute("SELECT count(*) FROM tech_users").fetchone()
        samples.append(time.perf_counter() - started)
        connection.close()
    return _percentiles(samples)


def _exported_copy(source: Path, target: Path, key_file: Path | None) -> None:
    """``source`` rewritten into ``target`` by SQLCipher's export, encrypted with the key in ``key_file`` or
    plain: both sides of the comparison get the same compact page layout (the export rebuilds every table,
    as VACUUM does)."""
    started = time.perf_counter()
    connection = open_for_export(source, None)
    try:
        export_to(connection, target, read_key_file(key_file) if key_file is not None else None)
    finally:
        connection.close()
    connection = connect(target)
    connection.execute("PRAGMA journal_mode = WAL").fetchone()
    connection.close()
    kind = "encrypted" if key_file is not None else "plain"
    print(f"    {kind} copy exported in {time.perf_counter() - started:.1f} s")


async def _append_side(root: Path, key_file: Path | None) -> tuple[Any, Any, int]:
    data_dir = DataDir(root)
    await asyncio.to_thread(upgrade, data_dir)
    if key_file is not None:
        await asyncio.to_thread(encrypt_database, data_dir, key_file)
    engine = create_engine(data_dir.db_path)
    factory = session_factory(engine)
    async with factory() as s, s.begin():
        tech = TechUser(username="bench", full_name="Bench", role="technician")
        subject = Subject(subject_code="P-2026-0001")
        s.add_all([tech, subject])
        await s.flush()
        row = TreatmentSession(
            subject_id=subject.subject_id, tech_id=tech.tech_id, start_time=START, status="in_progress"
        )
        s.add(row)
        await s.flush()
        session_id = row.session_id
    return engine, factory, session_id


async def bench_appends(work: Path, key_file: Path, events: int, batch: int) -> None:
    sides = {
        "plain": await _append_side(work / "append_plain", None),
        "encrypted": await _append_side(work / "append_encrypted", key_file),
    }
    times: dict[str, list[float]] = {"plain": [], "encrypted": []}
    try:
        for index in range(0, events, batch):
            order = ("plain", "encrypted") if (index // batch) % 2 == 0 else ("encrypted", "plain")
            for name in order:
                _engine, factory, session_id = sides[name]
                rows = [event(session_id, n) for n in range(index, min(events, index + batch))]
                started = time.perf_counter()
                async with factory() as s:
                    await TreatmentEventsRepository(s).add_many(rows)
                    await s.commit()
                times[name].append(time.perf_counter() - started)
    finally:
        for engine, _factory, _id in sides.values():
            await engine.dispose()
    rates = {name: events / sum(samples) for name, samples in times.items()}
    for name, samples in times.items():
        print(
            f"      {name:<10} median {statistics.median(samples) * 1e3:7.2f} ms per batch; "
            f"{rates[name]:8.0f} events/s"
        )
    print(f"    ratio encrypted / plain (events/s): {rates['encrypted'] / rates['plain']:.2f}")


def bench_verify(work: Path, key_file: Path, seconds: float) -> None:
    plain = DataDir(work / "verify_plain")
    upgrade(plain)
    rows = generate(plain.db_path, seconds)
    encrypted = DataDir(work / "verify_encrypted")
    shutil.copytree(plain.root, encrypted.root)
    encrypt_database(encrypted, key_file)
    rates = {}
    for label, data_dir in (("plain", plain), ("encrypted", encrypted)):
        verify_database(data_dir.db_path)  # the page cache as a second run finds it
        cpus = []
        for _ in range(3):
            started = time.process_time()
            result = verify_database(data_dir.db_path)
            cpus.append(time.process_time() - started)
            if result.failure is not None:
                raise SystemExit(f"verification failed: {result.failure.message}")
        total = sum(count.rows for count in result.counts)
        cpu = statistics.median(cpus)
        rates[label] = total / cpu
        print(
            f"      {label:<10} {total:,} rows in {cpu:.2f} s of CPU, {rates[label]:,.0f} rows/s "
            f"-> 5,000,000 rows in {5_000_000 / rates[label]:.1f} s"
        )
    print(
        f"    ratio encrypted / plain (rows/s): {rates['encrypted'] / rates['plain']:.2f}; {rows:,} generated"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="ten times fewer rows")
    parser.add_argument("--repeats", type=int, default=200, help="runs of each query (default 200)")
    parser.add_argument("--opens", type=int, default=500, help="connections opened in (a) (default 500)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of (b) (default 5)")
    parser.add_argument(
        "--verify-seconds", type=float, default=20.0, help="seconds of appends verified in (d) (default 20)"
    )
    args = parser.parse_args(argv)
    if args.repeats < 2 or args.opens < 2 or args.rounds < 1:
        parser.error("--repeats and --opens must be >= 2, --rounds >= 1")
    scale = 10 if args.quick else 1
    subjects, sessions, events = 2000 // scale, 50000 // scale, 5_000_000 // scale
    probe = open_for_export(Path(":memory:"), None)
    inside = probe.execute("SELECT sqlite_version()").fetchone()[0]
    probe.close()
    print(
        f"SQLCipher {sqlcipher_version()} on SQLite {inside} (encrypted); the standard library's SQLite "
        f"{sqlite3.sqlite_version} (plain): the two SQLite versions differ, and a query's plan may too"
    )
    with tempfile.TemporaryDirectory(prefix="tosca_bench_crypt_") as temp:
        work = Path(temp)
        key_file = work / "keys" / "db.key"
        create_key_file(key_file)
        os.environ[KEY_FILE_ENV] = str(key_file)  # how every opener finds the key of the encrypted copy

        cache = CACHE_DIR / f"tosca_bench_storage_{head_revision()}_{subjects}_{sessions}_{events}.db"
        print(f"(b) database: {subjects:,} subjects, {sessions:,} sessions, {events:,} events")
        if cache.exists():
            print(f"    using the cached database {cache}")
        else:
            print(f"    generating {cache} ...")
            _generate(cache, _template(work), subjects=subjects, sessions=sessions, events=events)
        plain = work / "plain" / "tosca.db"
        plain.parent.mkdir()
        _exported_copy(cache, plain, None)
        encrypted = work / "encrypted" / "tosca.db"
        encrypted.parent.mkdir()
        _exported_copy(cache, encrypted, key_file)
        sizes = plain.stat().st_size / 1e6, encrypted.stat().st_size / 1e6
        print(f"    sizes: plain {sizes[0]:.1f} MB, encrypted {sizes[1]:.1f} MB")

        print(f"(a) opening a connection and reading its first row, {args.opens} times (ms; goal < 10)")
        for label, path in (("encrypted", encrypted), ("plain", plain)):
            _open_times(path, 5)
            p50, p95 = _open_times(path, args.opens)
            print(f"      {label:<10} p50 {p50:7.3f}   p95 {p95:7.3f}")

        connection = sqlite3.connect(str(plain))
        codes = [r[0] for r in connection.execute("SELECT subject_code FROM subjects")]
        connection.close()

        def chooser(seed: int) -> Any:
            rng = random.Random(seed)

            def choose(name: str) -> tuple[Any, ...]:
                if name.startswith("1"):
                    return (rng.choice(codes),)
                if name.startswith("2"):
                    return (rng.randint(1, subjects),)
                if name.startswith("3"):
                    return (rng.randint(1, sessions),)
                if name.startswith("4"):
                    return (rng.choice(DEVICE_TYPES),)
                return ()

            return choose

        # Plain and encrypted take turns, round after round, so that other work on the machine falls on both;
        # each figure is the median over the rounds of that round's p50.
        rounds: dict[str, list[dict[str, tuple[float, float]]]] = {"plain": [], "encrypted": []}
        for round_number in range(args.rounds):
            for label, path in (("plain", plain), ("encrypted", encrypted)):
                storage = asyncio.run(_repo_timings(path, chooser(7 + round_number), args.repeats))
                raw = _raw_timings(path, chooser(7 + round_number), args.repeats)
                rounds[label].append({name: (storage[name][0], raw[name][0]) for name in SEED_QUERIES})

        def median(label: str, name: str, index: int) -> float:
            return statistics.median(r[name][index] for r in rounds[label])

        print(
            f"    p50 (ms) of {args.repeats} runs each, median of {args.rounds} alternating rounds: "
            "through the storage layer | raw SQL"
        )
        columns = f"{'plain':>9}{'encrypted':>11}{'ratio':>7}"
        print(f"      {'query':<26}{columns}  |{columns}")
        sums = {"plain": [0.0, 0.0], "encrypted": [0.0, 0.0]}
        for name in SEED_QUERIES:
            ps, pr = median("plain", name, 0), median("plain", name, 1)
            es, er = median("encrypted", name, 0), median("encrypted", name, 1)
            for label, (s, r) in (("plain", (ps, pr)), ("encrypted", (es, er))):
                sums[label][0] += s
                sums[label][1] += r
            print(
                f"      {name:<26}{ps:>9.3f}{es:>11.3f}{ps / es:>7.2f}  |{pr:>9.3f}{er:>11.3f}{pr / er:>7.2f}"
            )
        ratio_storage = sums["plain"][0] / sums["encrypted"][0]
        ratio_raw = sums["plain"][1] / sums["encrypted"][1]
        print(
            f"    ratio plain/encrypted of the summed p50 (goal >= 0.8): storage layer {ratio_storage:.2f}, "
            f"raw SQL {ratio_raw:.2f}"
        )
        events_c = 20_000 // (4 if args.quick else 1)
        print(f"(c) appending {events_c:,} chained events, one commit per 100")
        asyncio.run(bench_appends(work, key_file, events_c, 100))
        seconds = args.verify_seconds / (4 if args.quick else 1)
        print(f"(d) verifying the chained events appended in {seconds:g} s")
        bench_verify(work, key_file, seconds)
        print(f"    load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
