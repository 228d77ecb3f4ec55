"""Stores and pipelines as separate processes, talking through a real redis-server."""

from __future__ import annotations

import json
import subprocess
from collections import defaultdict
from typing import Any

from redis_helpers import spawn_demo

from market_data_store.testing.redis import RedisServer

STORES = ("store-a", "store-b")


def events_of(output: str, role: str) -> dict[str, list[tuple[int, str, str | None]]]:
    """(seq, level, reason) per coordinator, in the order a process printed them."""
    seen: dict[str, list[tuple[int, str, str | None]]] = defaultdict(list)
    for line in output.splitlines():
        record: dict[str, Any] = json.loads(line)
        if record.get("role") == role and "event" in record:
            event = record["event"]
            seen[event["coordinator_id"]].append((event["seq"], event["level"], event["reason"]))
    return dict(seen)


def finish(procs: list[subprocess.Popen[str]]) -> list[str]:
    """Each process's stdout once it exited 0 (killing the rest on the first failure)."""
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, f"exit {proc.returncode}:\n{out}\n{err}"
            outputs.append(out)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return outputs


def test_every_level_change_of_two_stores_reaches_two_pipelines_in_seq_order(
    redis_server: RedisServer, channel: str
) -> None:
    """Each of two pipeline processes gets every event of two store processes, in seq order."""
    common = ["--redis-url", redis_server.url, "--channel", channel, "--json", "--cycles", "3"]
    pipelines = [
        spawn_demo("--role", "pipeline", "--stores", ",".join(STORES), *common) for _ in range(2)
    ]
    for proc in pipelines:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        assert json.loads(ready or "{}").get("ready"), f"pipeline not ready: {ready!r}"
    stores = [spawn_demo("--role", "store", "--coordinator-id", name, *common) for name in STORES]
    *store_outputs, out_1, out_2 = finish(stores + pipelines)

    emitted: dict[str, list[tuple[int, str, str | None]]] = {}
    for output in store_outputs:
        emitted.update(events_of(output, "store"))
    assert sorted(emitted) == sorted(STORES)
    for name in STORES:
        seqs = [seq for seq, _, _ in emitted[name]]
        assert (
            seqs == list(range(1, len(seqs) + 1)) and len(seqs) == 10
        )  # 3 x (SOFT HARD OK) + stop
    for pipeline_output in (out_1, out_2):
        assert events_of(pipeline_output, "pipeline") == emitted


def test_demo_shows_both_stores_levels_in_the_pipeline(redis_server: RedisServer) -> None:
    """The demo exits 0 within 15 s; its pipeline saw both stores go HARD and stop."""
    proc = spawn_demo("--timeout", "12")
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, out + err
    for name in ("store-1", "store-2"):
        assert f"pipeline sees {name}: HARD" in out, out
        assert f"pipeline sees {name}: OK   seq=10 queue=0/20 (stopped)" in out, out
