"""Feedback across OS processes on 127.0.0.1: a store configured by MDS_FB_* variables only,
its webhook received by a real HTTP server or by the pipeline example under uvicorn."""

from __future__ import annotations

import base64
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

import pytest
from standardwebhooks import Webhook

ROOT = Path(__file__).resolve().parents[2]
STORE = Path(__file__).with_name("store_process.py")
RECEIVER = ROOT / "examples" / "run_feedback_receiver.py"
SECRET = "whsec_" + base64.b64encode(b"cross-process-secret-32-bytes!!!").decode()
DEADLINE = 10.0  # seconds for any one step


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MDS_")}
    env.update(extra)
    return env


class Lines:
    """A subprocess's stdout read by a thread, so each line can be awaited with a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self._lines: queue.Queue[str] = queue.Queue()
        self.thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self.thread.start()

    def _pump(self, stream: IO[str]) -> None:
        with stream:  # closed at end of file, by the thread that reads it
            for line in stream:
                self._lines.put(line)
        self._lines.put("")

    def next(self) -> str:
        line = self._lines.get(timeout=DEADLINE)
        assert line, "the process ended early"
        return line

    def next_json(self) -> Any:
        while True:
            line = self.next()
            if line.startswith("{"):
                return json.loads(line)


@dataclass
class Child:
    """A Python subprocess with its stdout read line by line."""

    proc: subprocess.Popen[str]
    lines: Lines

    def go_ahead(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()


@pytest.fixture
def processes() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        if child.proc.poll() is None:
            child.proc.kill()
        child.proc.wait(DEADLINE)
        assert child.proc.stdin is not None
        child.proc.stdin.close()
        child.lines.thread.join(DEADLINE)


def spawn(started: list[Child], args: list[str], env: dict[str, str], cwd: Path) -> Child:
    proc = subprocess.Popen(
        [sys.executable, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=cwd,
    )
    assert proc.stdout is not None
    child = Child(proc, Lines(proc.stdout))
    started.append(child)
    return child


def drive_store(store: Child, arrived: Callable[[dict[str, Any]], None]) -> Any:
    """Relay the store's step protocol: each event must arrive on the other side before the
    store takes its next step. Returns the events the store's own bus saw."""
    while True:
        message = store.lines.next_json()
        if "emitted" in message:
            assert store.proc.wait(DEADLINE) == 0
            return message["emitted"]
        arrived(message["event"])
        store.go_ahead()


class Endpoint:
    """A webhook endpoint on 127.0.0.1 recording every request."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.changed = threading.Condition()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                with endpoint.changed:
                    endpoint.requests.append((dict(self.headers.items()), body))
                    endpoint.changed.notify_all()
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def wait_for_seq(self, seq: int) -> None:
        with self.changed:
            assert self.changed.wait_for(
                lambda: any(json.loads(b)["seq"] == seq for _, b in self.requests), DEADLINE
            ), f"no POST of seq {seq}"


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    ep = Endpoint()
    thread = threading.Thread(target=ep.server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield ep
    ep.server.shutdown()
    ep.server.server_close()
    thread.join(DEADLINE)


def test_process_configured_only_by_env_posts_every_level_change_signed_once(
    endpoint: Endpoint, processes: list[Child], tmp_path: Path
) -> None:
    """MDS_FB_* alone: every level change and the final 'stopped' POSTed in order, signed, once."""
    env = clean_env(
        MDS_FB_ENABLE_HTTP_BROADCAST="true",
        MDS_FB_FEEDBACK_WEBHOOK_URL=endpoint.url,
        MDS_FB_WEBHOOK_SECRET=SECRET,
    )
    store = spawn(processes, [str(STORE), "env-only"], env, tmp_path)
    emitted = drive_store(store, lambda event: endpoint.wait_for_seq(event["seq"]))
    verifier = Webhook(SECRET)
    posted = [verifier.verify(body, headers) for headers, body in endpoint.requests]
    assert posted == emitted
    assert len({headers["webhook-id"] for headers, _ in endpoint.requests}) == len(posted)
    levels = [(p["level"], p["reason"]) for p in posted]
    assert ("soft", None) in levels and ("hard", None) in levels
    assert ("ok", "queue_recovered") in levels
    assert levels[-1] == ("ok", "stopped")


def test_pipeline_process_rate_controller_follows_a_store_process_through_the_receiver(
    processes: list[Child], tmp_path: Path
) -> None:
    """Every store event reaches the uvicorn pipeline's RateController, which slows and resets."""
    pipeline = spawn(
        processes,
        [str(RECEIVER), "--port", "0", "--json", "--exit-after-stopped", "1", "--max-rate", "1000"],
        clean_env(MDS_FB_WEBHOOK_SECRET=SECRET),
        tmp_path,
    )
    pipeline_lines = pipeline.lines
    url = pipeline_lines.next().strip().removeprefix("listening on ")
    env = clean_env(
        MDS_FB_ENABLE_HTTP_BROADCAST="true",
        MDS_FB_FEEDBACK_WEBHOOK_URL=url,
        MDS_FB_WEBHOOK_SECRET=SECRET,
    )
    received: list[dict[str, Any]] = []

    def arrived(event: dict[str, Any]) -> None:
        while not received or received[-1]["event"]["seq"] != event["seq"]:
            received.append(pipeline_lines.next_json())

    store = spawn(processes, [str(STORE), "pipeline"], env, tmp_path)
    emitted = drive_store(store, arrived)
    assert [r["event"] for r in received] == emitted
    rates = {(r["event"]["level"], r["event"]["reason"]): r["rate"] for r in received}
    assert rates[("soft", None)] == pytest.approx(800.0)  # the first event: no estimate yet
    # HARD cuts by at least hard_factor; deeper when a busy machine spaces SOFT and HARD more
    # than MIN_SAMPLE_SEC apart and the controller estimates the drain instead.
    assert 0.0 < rates[("hard", None)] <= 400.0 + 1e-9
    assert rates[("ok", "stopped")] == pytest.approx(1000.0)
    summary = pipeline_lines.next_json()["summary"]
    assert summary["events"] == len(emitted)
    assert pipeline.proc.wait(DEADLINE) == 0
