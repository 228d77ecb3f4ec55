"""The webhook never reads a response body past a few KiB: huge and endless answers cost nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

# Runs in a fresh interpreter so its peak RSS (VmHWM) measures this scenario alone.
SCRIPT = textwrap.dedent(
    """
    import asyncio, json, threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from market_data_store.feedback import BackpressureLevel, FeedbackBus, FeedbackEvent
    from market_data_store.feedback.http_broadcast import HttpFeedbackBroadcaster

    BODY_BYTES = 100 * 1024 * 1024
    CHUNK = b"x" * (1024 * 1024)
    answered = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers["content-length"]))
            endless = len(answered) >= 20
            answered.append(self.path)
            self.send_response(200)
            if endless:
                self.send_header("transfer-encoding", "chunked")
            else:
                self.send_header("content-length", str(BODY_BYTES))
            self.end_headers()
            sent = 0
            try:
                while endless or sent < BODY_BYTES:
                    if endless:
                        self.wfile.write(b"%x\\r\\n" % len(CHUNK) + CHUNK + b"\\r\\n")
                    else:
                        self.wfile.write(CHUNK)
                    sent += len(CHUNK)
            except OSError:
                pass  # the client hung up: what it should do
            self.close_connection = True

        def log_message(self, *args):
            pass

    def rss_kib(field):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise RuntimeError(field)

    async def main():
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = "http://127.0.0.1:%d/hook" % server.server_address[1]
        bus = FeedbackBus()
        caster = HttpFeedbackBroadcaster(url, bus=bus, timeout=3.0, max_retries=0)
        await caster.start()
        await bus.publish(FeedbackEvent("warm-up", 1, 10, BackpressureLevel.SOFT))
        while not answered:
            await asyncio.sleep(0.01)
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # reset the peak to the current RSS
        baseline = rss_kib("VmRSS")
        loop = asyncio.get_running_loop()
        started = loop.time()
        for i in range(20):
            await bus.publish(FeedbackEvent("c%d" % i, 9, 10, BackpressureLevel.HARD))
            deadline = loop.time() + 10
            while len(answered) < i + 2 and loop.time() < deadline:
                await asyncio.sleep(0.005)
        await caster.stop(timeout=5.0)
        print(json.dumps({
            "answered": len(answered),
            "growth_mib": (rss_kib("VmHWM") - baseline) / 1024,
            "seconds": loop.time() - started,
        }))
        server.shutdown()

    asyncio.run(main())
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_twenty_100mb_answers_and_an_endless_one_grow_peak_rss_by_under_50mb() -> None:
    """20 events answered with 100 MB bodies, then an endless chunked answer: peak RSS + < 50 MB."""
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["answered"] == 21  # the warm-up, 19 of 100 MB and the endless one last
    assert result["growth_mib"] < 50, result
