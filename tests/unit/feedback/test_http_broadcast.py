"""HttpFeedbackBroadcaster against pytest-httpx: payload, retries, signing, isolation, lifecycle."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from itertools import pairwise
from typing import Any

import httpx
import pytest
from loguru import logger
from prometheus_client import REGISTRY
from pytest_httpx import HTTPXMock
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from market_data_store.errors import ConfigError
from market_data_store.feedback import BackpressureLevel, FeedbackBus, FeedbackEvent, http_broadcast
from market_data_store.feedback.http_broadcast import HttpFeedbackBroadcaster, backoff_delay
from market_data_store.feedback.settings import FeedbackSettings
from market_data_store.testing.waits import wait_until

URL = "http://hooks.test/feedback"
SECRET = "whsec_" + base64.b64encode(b"feedback-test-secret-32-bytes!!!").decode()


def make_event(coordinator_id: str = "c1", seq: int = 0, queue_size: int = 80) -> FeedbackEvent:
    return FeedbackEvent(coordinator_id, queue_size, 100, BackpressureLevel.HARD, seq=seq)


def sends(outcome: str) -> float:
    value = REGISTRY.get_sample_value("mds_feedback_webhook_sends_total", {"outcome": outcome})
    return value or 0.0


def dropped(reason: str) -> float:
    value = REGISTRY.get_sample_value("mds_feedback_webhook_dropped_total", {"reason": reason})
    return value or 0.0


def broadcaster(bus: FeedbackBus, **kwargs: Any) -> HttpFeedbackBroadcaster:
    kwargs.setdefault("backoff_base", 0.0)
    return HttpFeedbackBroadcaster(URL, bus=bus, **kwargs)


def gate_callback(gate: asyncio.Event, status: int = 200) -> Callable[..., Any]:
    """An httpx_mock callback whose response waits until ``gate`` is set."""

    async def respond(request: httpx.Request) -> httpx.Response:
        await gate.wait()
        return httpx.Response(status)

    return respond


@pytest.fixture
def bus() -> FeedbackBus:
    return FeedbackBus()


async def test_posts_event_as_json_with_utilization(
    bus: FeedbackBus, httpx_mock: HTTPXMock
) -> None:
    """One published event becomes one POST whose JSON body is the event's fields + utilization."""
    httpx_mock.add_response(url=URL, method="POST")
    event = make_event("bars-1", seq=7, queue_size=85)
    async with broadcaster(bus):
        await bus.publish(event)
        await wait_until(lambda: len(httpx_mock.get_requests()) == 1)
    (request,) = httpx_mock.get_requests()
    assert request.method == "POST"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {
        "coordinator_id": "bars-1",
        "queue_size": 85,
        "capacity": 100,
        "level": "hard",
        "reason": None,
        "ts": event.ts,
        "seq": 7,
        "drain_rate": None,
        "arrival_rate": None,
        "utilization": 0.85,
    }
    assert "webhook-signature" not in request.headers


async def test_retries_server_error_then_succeeds(bus: FeedbackBus, httpx_mock: HTTPXMock) -> None:
    """A 500 answer is retried and the next attempt's success ends the delivery."""
    httpx_mock.add_response(status_code=500)
    httpx_mock.add_response(status_code=200)
    before = sends("server_error"), sends("success"), dropped("gave_up")
    async with broadcaster(bus, max_retries=3):
        await bus.publish(make_event())
        await wait_until(lambda: sends("success") == before[1] + 1)
    assert len(httpx_mock.get_requests()) == 2
    assert sends("server_error") == before[0] + 1
    assert dropped("gave_up") == before[2]


async def test_gives_up_after_max_retries(bus: FeedbackBus, httpx_mock: HTTPXMock) -> None:
    """With max_retries=2 a failing endpoint gets exactly 3 attempts, then the event is dropped."""
    httpx_mock.add_response(status_code=503, is_reusable=True)
    gave_up = dropped("gave_up")
    async with broadcaster(bus, max_retries=2):
        await bus.publish(make_event())
        await wait_until(lambda: dropped("gave_up") == gave_up + 1)
    assert len(httpx_mock.get_requests()) == 3


@pytest.mark.parametrize("status", [400, 404, 422])
async def test_client_error_is_not_retried(
    bus: FeedbackBus, httpx_mock: HTTPXMock, status: int
) -> None:
    """A 4xx answer is final: one attempt, counted as rejected, no retry."""
    httpx_mock.add_response(status_code=status)  # a second request would fail the test
    rejected, client_errors = dropped("rejected"), sends("client_error")
    async with broadcaster(bus, max_retries=3):
        await bus.publish(make_event())
        await wait_until(lambda: dropped("rejected") == rejected + 1)
    assert len(httpx_mock.get_requests()) == 1
    assert sends("client_error") == client_errors + 1


async def test_retries_wait_out_a_growing_backoff(bus: FeedbackBus, httpx_mock: HTTPXMock) -> None:
    """Each retry waits at least half of backoff_base * 2**(retry-1) after the failed attempt."""
    sent_at: list[float] = []

    async def fail(request: httpx.Request) -> httpx.Response:
        sent_at.append(time.monotonic())
        return httpx.Response(503)

    httpx_mock.add_callback(fail, is_reusable=True)
    gave_up = dropped("gave_up")
    async with broadcaster(bus, max_retries=2, backoff_base=0.04):
        await bus.publish(make_event())
        await wait_until(lambda: dropped("gave_up") == gave_up + 1)
    gaps = [later - earlier for earlier, later in pairwise(sent_at)]
    slack = 0.005  # the loop's clock may wake a timer a hair early
    assert len(gaps) == 2
    assert gaps[0] >= 0.02 - slack
    assert gaps[1] >= 0.04 - slack


async def test_backoff_grows_exponentially_with_jitter_and_cap() -> None:
    """Retry n waits between half and all of base * 2**(n-1), never more than the cap."""
    for retry, full in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0)]:
        delays = [backoff_delay(retry, 0.5, cap=3.0) for _ in range(200)]
        expected = min(full, 3.0)
        assert all(expected / 2 <= d <= expected for d in delays)
        assert len(set(delays)) > 1
    assert backoff_delay(5, 0.0) == 0.0


async def test_timeout_neither_blocks_the_bus_nor_the_publisher(
    bus: FeedbackBus, httpx_mock: HTTPXMock
) -> None:
    """httpx timeouts are counted and retried while publish() and other subscribers go on."""
    httpx_mock.add_exception(httpx.ReadTimeout("endpoint too slow"), is_reusable=True)
    seen: list[FeedbackEvent] = []

    async def other(event: FeedbackEvent) -> None:
        seen.append(event)

    bus.subscribe(other)
    timeouts, gave_up = sends("timeout"), dropped("gave_up")
    async with broadcaster(bus, max_retries=1):
        for seq in range(5):
            await asyncio.wait_for(bus.publish(make_event(seq=seq)), timeout=1.0)
        assert [e.seq for e in seen] == [0, 1, 2, 3, 4]
        await wait_until(lambda: dropped("gave_up") > gave_up)
    assert sends("timeout") >= timeouts + 2


async def test_attempt_slower_than_timeout_is_cut_off(
    bus: FeedbackBus, httpx_mock: HTTPXMock
) -> None:
    """A response slower than `timeout` ends the attempt as a timeout; later events still go."""
    httpx_mock.add_callback(gate_callback(asyncio.Event()))  # never answers
    httpx_mock.add_response(status_code=200)
    timeouts, successes = sends("timeout"), sends("success")
    async with broadcaster(bus, timeout=0.05, max_retries=0):
        await bus.publish(make_event("a"))
        await wait_until(lambda: sends("timeout") == timeouts + 1, timeout=2.0)
        await bus.publish(make_event("b"))
        await wait_until(lambda: sends("success") == successes + 1, timeout=2.0)
    sent = [json.loads(r.content)["coordinator_id"] for r in httpx_mock.get_requests()]
    assert sent == ["a", "b"]


@pytest.mark.parametrize("endpoint", ["down", "slower_than_timeout", "answering_500"])
async def test_bad_endpoint_leaves_bus_and_subscribers_unaffected(
    httpx_mock: HTTPXMock, endpoint: str
) -> None:
    """Down, hung or 500 endpoint: publish stays fast, others get all events, outbox bounded."""
    if endpoint == "down":
        httpx_mock.add_exception(httpx.ConnectError("connection refused"), is_reusable=True)
    elif endpoint == "slower_than_timeout":
        httpx_mock.add_callback(gate_callback(asyncio.Event()), is_reusable=True)
    else:
        httpx_mock.add_response(status_code=500, is_reusable=True)
    bus = FeedbackBus(max_backlog=10_000)  # so the other subscriber sees every event
    seen: list[FeedbackEvent] = []

    async def other(event: FeedbackEvent) -> None:
        seen.append(event)

    bus.subscribe(other)
    caster = broadcaster(bus, timeout=0.05, max_retries=2, backoff_base=0.01, max_pending=8)
    outbox_full = dropped("outbox_full")
    async with caster:
        for seq in range(10):  # a burst, as a queue emits it
            for c in range(40):
                bus.publish_nowait(make_event(f"c{c}", seq=seq))
        await asyncio.wait_for(bus.flush(), timeout=1.0)
        assert 0 < caster.outbox_size <= 8
        for c in range(40):  # and awaited publishes, which wait for every subscriber
            await asyncio.wait_for(bus.publish(make_event(f"c{c}", seq=10)), timeout=1.0)
            assert caster.outbox_size <= 8
        await asyncio.wait_for(caster.stop(timeout=0.2), timeout=2.0)
    assert len(seen) == 440
    for c in range(40):
        assert [e.seq for e in seen if e.coordinator_id == f"c{c}"] == list(range(11))
    assert dropped("outbox_full") > outbox_full
    assert caster.outbox_size == 0
    assert bus.subscriber_count == 1


async def test_keeps_only_latest_event_per_coordinator(
    bus: FeedbackBus, httpx_mock: HTTPXMock
) -> None:
    """While a POST is in flight, newer events of a coordinator replace its waiting one."""
    gate = asyncio.Event()
    httpx_mock.add_callback(gate_callback(gate), is_reusable=True)
    superseded = dropped("superseded")
    async with broadcaster(bus, timeout=10.0):
        await bus.publish(make_event("a", seq=0))
        await wait_until(lambda: len(httpx_mock.get_requests()) == 1)  # a#0 is in flight
        for seq in range(1, 6):
            await bus.publish(make_event("a", seq=seq))
        for seq in range(1, 4):
            await bus.publish(make_event("b", seq=seq))
        assert dropped("superseded") == superseded + 6
        gate.set()
        await wait_until(lambda: len(httpx_mock.get_requests()) == 3)
    sent = [json.loads(r.content) for r in httpx_mock.get_requests()]
    assert [(e["coordinator_id"], e["seq"]) for e in sent] == [("a", 0), ("a", 5), ("b", 3)]


async def test_retry_abandoned_when_newer_event_of_same_coordinator_waits(
    bus: FeedbackBus, httpx_mock: HTTPXMock
) -> None:
    """A failed event is not retried once a newer event of its coordinator is waiting."""
    gate = asyncio.Event()
    httpx_mock.add_callback(gate_callback(gate, status=500))
    httpx_mock.add_response(status_code=200)
    superseded = dropped("superseded")
    async with broadcaster(bus, timeout=10.0, max_retries=5):
        await bus.publish(make_event("a", seq=0))
        await wait_until(lambda: len(httpx_mock.get_requests()) == 1)
        await bus.publish(make_event("a", seq=1))
        gate.set()
        await wait_until(lambda: len(httpx_mock.get_requests()) == 2)
    sent = [json.loads(r.content)["seq"] for r in httpx_mock.get_requests()]
    assert sent == [0, 1]
    assert dropped("superseded") == superseded + 1


async def test_outbox_bounds_coordinators_dropping_oldest(
    bus: FeedbackBus, httpx_mock: HTTPXMock
) -> None:
    """Past max_pending coordinators the oldest waiting event is dropped and counted."""
    gate = asyncio.Event()
    httpx_mock.add_callback(gate_callback(gate), is_reusable=True)
    full = dropped("outbox_full")
    caster = broadcaster(bus, timeout=10.0, max_pending=2)
    async with caster:
        await bus.publish(make_event("x"))
        await wait_until(lambda: len(httpx_mock.get_requests()) == 1)
        for coordinator_id in ("a", "b", "c"):
            await bus.publish(make_event(coordinator_id))
        assert caster.outbox_size == 2
        assert dropped("outbox_full") == full + 1
        gate.set()
        await wait_until(lambda: len(httpx_mock.get_requests()) == 3)
    sent = [json.loads(r.content)["coordinator_id"] for r in httpx_mock.get_requests()]
    assert sent == ["x", "b", "c"]


async def test_signature_verifies_and_id_is_stable_across_retries(
    bus: FeedbackBus, httpx_mock: HTTPXMock
) -> None:
    """Signed requests verify with standardwebhooks; every retry of an event keeps its id."""
    httpx_mock.add_response(status_code=503)
    httpx_mock.add_response(status_code=503)
    httpx_mock.add_response(status_code=200)
    event = make_event("signed", seq=3)
    async with broadcaster(bus, secret=SECRET):
        await bus.publish(event)
        await wait_until(lambda: len(httpx_mock.get_requests()) == 3)
    requests = httpx_mock.get_requests()
    verifier = Webhook(SECRET)
    for request in requests:
        assert request.headers["webhook-signature"].startswith("v1,")
        assert verifier.verify(request.content, dict(request.headers)) == event.to_dict()
    assert len({r.headers["webhook-id"] for r in requests}) == 1
    with pytest.raises(WebhookVerificationError):
        verifier.verify(
            requests[0].content.replace(b"signed", b"forged"), dict(requests[0].headers)
        )
    other_key = "whsec_" + base64.b64encode(b"another-secret-of-32-bytes!!!!!!").decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other_key).verify(requests[0].content, dict(requests[0].headers))


async def test_each_event_gets_its_own_webhook_id(bus: FeedbackBus, httpx_mock: HTTPXMock) -> None:
    """Two events are two messages: their webhook-id headers differ."""
    httpx_mock.add_response(is_reusable=True)
    async with broadcaster(bus, secret=SECRET):
        await bus.publish(make_event("a"))
        await bus.publish(make_event("b"))
        await wait_until(lambda: len(httpx_mock.get_requests()) == 2)
    ids = {r.headers["webhook-id"] for r in httpx_mock.get_requests()}
    assert len(ids) == 2


async def test_stop_flushes_pending_events(bus: FeedbackBus, httpx_mock: HTTPXMock) -> None:
    """Events still in the outbox at stop() are sent before it returns, time permitting."""
    httpx_mock.add_response(is_reusable=True)
    caster = broadcaster(bus)
    await caster.start()
    for coordinator_id in ("a", "b", "c"):
        await bus.publish(make_event(coordinator_id))
    await caster.stop(timeout=5.0)
    sent = [json.loads(r.content)["coordinator_id"] for r in httpx_mock.get_requests()]
    assert sent == ["a", "b", "c"]


async def test_stop_is_bounded_by_its_timeout_with_hung_endpoint(
    bus: FeedbackBus, httpx_mock: HTTPXMock
) -> None:
    """stop(timeout) returns on time though a POST hangs; unsent events are counted."""
    httpx_mock.add_callback(gate_callback(asyncio.Event()), is_reusable=True)
    caster = broadcaster(bus, timeout=60.0)
    await caster.start()
    await bus.publish(make_event("a"))
    await bus.publish(make_event("b"))
    await wait_until(lambda: len(httpx_mock.get_requests()) == 1)
    stopped = dropped("stopped")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(caster.stop(timeout=0.1), timeout=5.0)
    assert loop.time() - started < 2.0
    assert dropped("stopped") == stopped + 2
    assert caster.state == "stopped"


async def test_lifecycle_is_explicit_idempotent_and_final(bus: FeedbackBus) -> None:
    """new -> running -> stopped; start/stop twice change nothing; a stopped one cannot restart."""
    caster = broadcaster(bus)
    assert caster.state == "new"
    await caster.start()
    await caster.start()
    assert caster.state == "running"
    assert bus.subscriber_count == 1
    await caster.stop()
    await caster.stop()
    assert caster.state == "stopped"
    assert bus.subscriber_count == 0
    with pytest.raises(RuntimeError, match="restart"):
        await caster.start()
    never_started = broadcaster(bus)
    await never_started.stop()
    assert never_started.state == "stopped"
    with pytest.raises(RuntimeError):
        await never_started.start()


async def test_async_with_subscribes_and_unsubscribes(bus: FeedbackBus) -> None:
    """`async with` subscribes to the given bus on entry and unsubscribes on exit."""
    async with broadcaster(bus) as caster:
        assert list(bus.subscribers()) == [caster]
    assert bus.subscriber_count == 0


async def test_events_outside_running_state_are_ignored(bus: FeedbackBus) -> None:
    """Calling the subscriber before start or after stop files nothing."""
    caster = broadcaster(bus)
    await caster(make_event())
    assert caster.outbox_size == 0
    await caster.start()
    await caster.stop()
    await caster(make_event())
    assert caster.outbox_size == 0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"url": "ftp://hooks.test/x"}, "url"),
        ({"url": "hooks.test/feedback"}, "url"),
        ({"url": "http://:8080/x"}, "url"),
        ({"url": "http://[::1/x"}, "url"),
        ({"url": "http://hooks.test:99999/x"}, "url"),
        ({"url": "http://hooks.test:-1/x"}, "url"),
        ({"url": "http://hooks.test:0/x"}, "url"),
        ({"url": "http://hooks.test/x\r\nX-Injected: 1"}, "url"),
        ({"url": "http://hooks.test/a b"}, "url"),
        ({"url": " http://hooks.test/x"}, "url"),
        ({"url": "http://hooks.test/\x00x"}, "url"),
        ({"url": "http://hooks.test/x\x7f"}, "url"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1.0}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": 1.5}, "max_retries"),
        ({"secret": "plain-text"}, "secret"),
        ({"secret": "whsec_***not-base64***"}, "secret"),
        ({"secret": "whsec_" + base64.b64encode(b"short").decode()}, "secret"),
        ({"backoff_base": -0.1}, "backoff_base"),
        ({"max_pending": 0}, "max_pending"),
    ],
)
def test_constructor_rejects_bad_arguments_naming_them(kwargs: dict[str, Any], name: str) -> None:
    """Bad url, timeout, max_retries or secret raise ConfigError naming the parameter."""
    args: dict[str, Any] = {"url": URL, "bus": FeedbackBus(), **kwargs}
    with pytest.raises(ConfigError, match=rf"\b{name}\b"):
        HttpFeedbackBroadcaster(args.pop("url"), **args)


def test_constructor_accepts_https_ipv6_and_secret() -> None:
    """Well-formed arguments (https, IPv6 literal host, whsec_ secret, 0 retries) are accepted."""
    caster = HttpFeedbackBroadcaster(
        "https://[::1]:8443/hook", timeout=0.5, max_retries=0, secret=SECRET, bus=FeedbackBus()
    )
    assert caster.state == "new"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    import os

    for key in list(os.environ):
        if key.upper().startswith("MDS_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


@pytest.mark.usefixtures("clean_env")
def test_from_settings_returns_none_when_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Broadcast disabled (the default, or explicitly with a URL) means no broadcaster."""
    assert HttpFeedbackBroadcaster.from_settings() is None
    monkeypatch.setenv("MDS_FB_ENABLE_HTTP_BROADCAST", "false")
    monkeypatch.setenv("MDS_FB_FEEDBACK_WEBHOOK_URL", URL)
    assert HttpFeedbackBroadcaster.from_settings() is None
    assert HttpFeedbackBroadcaster.from_settings(FeedbackSettings()) is None


@pytest.mark.usefixtures("clean_env")
def test_from_settings_builds_configured_broadcaster(monkeypatch: pytest.MonkeyPatch) -> None:
    """Enabled settings (from env or given) yield a broadcaster with their url/timeout/retries."""
    given = FeedbackSettings(enable_http_broadcast=True, feedback_webhook_url="https://x.test/h")
    bus = FeedbackBus()
    built = HttpFeedbackBroadcaster.from_settings(given, bus=bus)
    assert built is not None
    assert (built.url, built.timeout, built.max_retries, built.signed) == (
        "https://x.test/h",
        2.0,
        3,
        False,
    )
    monkeypatch.setenv("MDS_FB_ENABLE_HTTP_BROADCAST", "true")
    monkeypatch.setenv("MDS_FB_FEEDBACK_WEBHOOK_URL", URL)
    monkeypatch.setenv("MDS_FB_HTTP_TIMEOUT", "0.75")
    monkeypatch.setenv("MDS_FB_HTTP_MAX_RETRIES", "5")
    monkeypatch.setenv("MDS_FB_WEBHOOK_SECRET", SECRET)
    caster = HttpFeedbackBroadcaster.from_settings()
    assert caster is not None
    assert (caster.url, caster.timeout, caster.max_retries, caster.signed) == (URL, 0.75, 5, True)


@pytest.fixture
def warnings_logged(log_messages: list[str]) -> Iterator[list[str]]:
    """Warnings as bare messages; ``log_messages`` enables the library's logging."""
    messages: list[str] = []
    logger.enable("market_data_store")  # disabled at import (issue 13.2)
    handler = logger.add(lambda m: messages.append(str(m)), level="WARNING", format="{message}")
    yield messages
    logger.remove(handler)
    logger.disable("market_data_store")


async def test_without_httpx_warns_once_and_does_nothing(
    bus: FeedbackBus, monkeypatch: pytest.MonkeyPatch, warnings_logged: list[str]
) -> None:
    """With httpx unimportable: one warning, no subscription, publish and stop still work."""
    monkeypatch.setitem(sys.modules, "httpx", None)
    monkeypatch.setattr(http_broadcast, "_missing_httpx_warned", False)
    first = HttpFeedbackBroadcaster(URL, bus=bus)
    second = HttpFeedbackBroadcaster(URL, bus=bus, secret=SECRET)
    assert len(warnings_logged) == 1
    assert "httpx is not installed" in warnings_logged[0]
    assert not first.enabled and not second.enabled
    async with first:
        assert first.state == "running"
        assert bus.subscriber_count == 0
        await bus.publish(make_event())
        await first(make_event())
        assert first.outbox_size == 0
    assert first.state == "stopped"


def test_library_imports_and_works_without_httpx() -> None:
    """In a fresh interpreter where httpx cannot be imported, every module imports and runs."""
    script = """
import asyncio, importlib, pkgutil, sys
sys.modules["httpx"] = None
import market_data_store
from loguru import logger
logger.enable("market_data_store")  # disabled at import (issue 13.2)
for info in pkgutil.walk_packages(market_data_store.__path__, "market_data_store."):
    importlib.import_module(info.name)
from market_data_store.feedback import BackpressureLevel, FeedbackBus, FeedbackEvent
from market_data_store.feedback.http_broadcast import HttpFeedbackBroadcaster

async def main():
    bus = FeedbackBus()
    seen = []
    async def other(event):
        seen.append(event)
    bus.subscribe(other)
    async with HttpFeedbackBroadcaster("http://127.0.0.1:9/x", bus=bus) as caster:
        HttpFeedbackBroadcaster("http://127.0.0.1:9/y", bus=bus)
        await bus.publish(FeedbackEvent("c", 9, 10, BackpressureLevel.HARD))
    print("enabled", caster.enabled, "seen", len(seen))

asyncio.run(main())
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "enabled False seen 1"
    assert result.stderr.count("httpx is not installed") == 1


def test_importing_the_library_does_not_import_httpx() -> None:
    """httpx is imported only when a broadcaster is built, not when the library is imported."""
    script = """
import importlib, pkgutil, sys
import market_data_store
for info in pkgutil.walk_packages(market_data_store.__path__, "market_data_store."):
    importlib.import_module(info.name)
print("httpx" in sys.modules)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_default_timeout_is_two_seconds_and_three_retries() -> None:
    """Built without options, the broadcaster gives each POST 2 s and retries 3 times."""
    built = HttpFeedbackBroadcaster(URL, bus=FeedbackBus())
    assert (built.timeout, built.max_retries) == (2.0, 3)


PASSWORD = "pa55-w0rd-never-logged"
TOKEN = "query-t0ken-never-logged"


@pytest.mark.parametrize(
    "bad_url",
    [
        f"http://alice:{PASSWORD}@hooks.test:99999/x?token={TOKEN}",
        f"ftp://alice:{PASSWORD}@hooks.test/x?token={TOKEN}",
        f"http://alice:{PASSWORD}@hooks.test/x y?token={TOKEN}",
    ],
)
def test_bad_url_errors_name_the_argument_and_variable_without_credentials(
    bad_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """A bad URL's ConfigError names url / MDS_FB_FEEDBACK_WEBHOOK_URL, never its password."""
    with pytest.raises(ConfigError, match=r"\burl\b") as by_argument:
        HttpFeedbackBroadcaster(bad_url, bus=FeedbackBus())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MDS_FB_ENABLE_HTTP_BROADCAST", "true")
    monkeypatch.setenv("MDS_FB_FEEDBACK_WEBHOOK_URL", bad_url)
    with pytest.raises(ConfigError, match="MDS_FB_FEEDBACK_WEBHOOK_URL") as by_variable:
        FeedbackSettings()
    for message in (str(by_argument.value), str(by_variable.value)):
        assert PASSWORD not in message and TOKEN not in message


async def test_credentials_in_the_url_reach_no_log_line_at_debug(
    bus: FeedbackBus, log_messages: list[str]
) -> None:
    """Connection errors and failures logged at DEBUG show the URL without password or query."""
    records: list[str] = []
    handler = logger.add(
        lambda m: records.append(str(m)), level="DEBUG", format="{message} {exception}"
    )
    url = f"http://alice:{PASSWORD}@127.0.0.1:9/hook?token={TOKEN}"  # port 9: nobody listens
    caster = HttpFeedbackBroadcaster(url, bus=bus, max_retries=1, backoff_base=0.0)
    gave_up = dropped("gave_up")
    try:
        async with caster:
            await bus.publish(make_event())
            await wait_until(lambda: dropped("gave_up") > gave_up)
    finally:
        logger.remove(handler)
    assert any("127.0.0.1:9" in r for r in records)
    assert not [r for r in records if PASSWORD in r or TOKEN in r]


class CountingStream(httpx.AsyncByteStream):
    """A response body of ``chunks`` pieces of 1 KiB that counts the bytes it hands out."""

    def __init__(self, chunks: int) -> None:
        self.chunks = chunks
        self.handed_out = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        piece = b"x" * 1024
        for _ in range(self.chunks):
            self.handed_out += len(piece)
            yield piece


async def test_a_huge_response_body_is_read_no_further_than_a_few_kib(
    bus: FeedbackBus, httpx_mock: HTTPXMock
) -> None:
    """A 200 whose body is ~10 MiB counts as a success, and at most 16 KiB of it is read."""
    body = CountingStream(10_000)
    httpx_mock.add_response(status_code=200, stream=body)
    successes = sends("success")
    async with broadcaster(bus, max_retries=0):
        await bus.publish(make_event())
        await wait_until(lambda: sends("success") == successes + 1, timeout=5.0)
    assert len(httpx_mock.get_requests()) == 1
    assert 0 < body.handed_out <= 16 * 1024
