"""Auto-wiring: MDS_FB_* settings alone start one process-wide webhook for coordinators."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest
from loguru import logger
from pytest_httpx import HTTPXMock

from market_data_store.coordinator import WriteCoordinator
from market_data_store.errors import ConfigError
from market_data_store.feedback import FeedbackBus, autowire, feedback_bus
from market_data_store.feedback.http_broadcast import HttpFeedbackBroadcaster
from market_data_store.testing.waits import wait_until

URL = "http://hooks.test/feedback"


class NullSink:
    """Accepts every batch."""

    async def write(self, batch: Sequence[int]) -> None:
        return None


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No MDS_* variable from outside, a cwd without .env, and no transport left running."""
    for key in list(os.environ):
        if key.upper().startswith("MDS_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    assert autowire.active_transports() == ()


@pytest.fixture
def enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MDS_FB_ENABLE_HTTP_BROADCAST", "true")
    monkeypatch.setenv("MDS_FB_FEEDBACK_WEBHOOK_URL", URL)


def coordinator(coord_id: str = "auto", bus: FeedbackBus | None = None) -> WriteCoordinator[int]:
    return WriteCoordinator(
        sink=NullSink(), capacity=10, workers=1, batch_size=1, coord_id=coord_id, bus=bus
    )


def posted(httpx_mock: HTTPXMock) -> list[dict[str, object]]:
    return [json.loads(r.content) for r in httpx_mock.get_requests()]


@pytest.mark.usefixtures("enabled")
async def test_env_alone_starts_one_broadcaster_that_posts_the_stopped_event(
    httpx_mock: HTTPXMock,
) -> None:
    """Env-enabled webhook: a started coordinator has a broadcaster; its stop POSTs 'stopped'."""
    httpx_mock.add_response(status_code=204, is_reusable=True)
    coord = coordinator()
    await coord.start()
    (transport,) = autowire.active_transports()
    assert isinstance(transport, HttpFeedbackBroadcaster)
    assert transport in feedback_bus().subscribers()
    await coord.stop(timeout=5.0)
    assert autowire.active_transports() == ()
    assert transport.state == "stopped"
    assert [(p["coordinator_id"], p["reason"]) for p in posted(httpx_mock)] == [("auto", "stopped")]


@pytest.mark.usefixtures("enabled")
async def test_last_coordinator_to_stop_stops_the_shared_broadcaster(
    httpx_mock: HTTPXMock,
) -> None:
    """Two coordinators share one broadcaster; it outlives the first stop, not the last."""
    httpx_mock.add_response(status_code=204, is_reusable=True)
    first, second = coordinator("a"), coordinator("b")
    await first.start()
    await second.start()
    (transport,) = autowire.active_transports()
    await first.stop(timeout=5.0)
    assert autowire.active_transports() == (transport,)
    await second.stop(timeout=5.0)
    assert transport.state == "stopped"
    reasons = sorted((p["coordinator_id"], p["reason"]) for p in posted(httpx_mock))
    assert reasons == [("a", "stopped"), ("b", "stopped")]


async def test_wired_webhook_url_credentials_reach_no_log_line(
    monkeypatch: pytest.MonkeyPatch, httpx_mock: HTTPXMock, log_messages: list[str]
) -> None:
    """The auto-wiring's log lines (DEBUG and up) show the webhook URL without its secrets."""
    password, token = "aut0-wire-pa55", "aut0-wire-t0ken"
    monkeypatch.setenv("MDS_FB_ENABLE_HTTP_BROADCAST", "true")
    monkeypatch.setenv(
        "MDS_FB_FEEDBACK_WEBHOOK_URL", f"http://alice:{password}@hooks.test/feedback?t={token}"
    )
    httpx_mock.add_response(status_code=204, is_reusable=True)
    records: list[str] = []
    handler = logger.add(lambda m: records.append(str(m)), level="DEBUG", format="{message}")
    try:
        async with coordinator():
            pass
    finally:
        logger.remove(handler)
    assert any("hooks.test" in r for r in records)  # the wiring did log the URL
    assert not [r for r in records if password in r or token in r]


async def test_enabled_without_url_fails_start_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MDS_FB_ENABLE_HTTP_BROADCAST=true without a URL: start() raises ConfigError naming it."""
    monkeypatch.setenv("MDS_FB_ENABLE_HTTP_BROADCAST", "true")
    coord = coordinator()
    with pytest.raises(ConfigError, match="MDS_FB_FEEDBACK_WEBHOOK_URL"):
        await coord.start()
    assert coord.state == "new"
    monkeypatch.delenv("MDS_FB_ENABLE_HTTP_BROADCAST")
    async with coord:  # the failed start left no share behind
        assert autowire.active_transports() == ()


@pytest.mark.usefixtures("enabled")
async def test_coordinator_with_its_own_bus_is_not_wired() -> None:
    """A coordinator given bus= starts no transport even with the webhook enabled."""
    async with coordinator(bus=FeedbackBus()):
        assert autowire.active_transports() == ()


@pytest.mark.usefixtures("enabled")
async def test_broadcaster_already_on_the_bus_for_the_url_means_no_second(
    httpx_mock: HTTPXMock,
) -> None:
    """An application's own broadcaster for the same URL: auto-wiring adds none; one POST."""
    httpx_mock.add_response(status_code=204, is_reusable=True)
    async with HttpFeedbackBroadcaster(URL) as own:
        async with coordinator():
            assert autowire.active_transports() == ()
        await wait_until(lambda: len(httpx_mock.get_requests()) >= 1)
        await feedback_bus().flush(timeout=5.0)
    assert own.state == "stopped"
    assert [p["reason"] for p in posted(httpx_mock)] == ["stopped"]


async def test_dotenv_file_enables_the_webhook(clean_env: Path, httpx_mock: HTTPXMock) -> None:
    """The two variables in a .env file in the working directory are enough."""
    httpx_mock.add_response(status_code=204, is_reusable=True)
    (clean_env / ".env").write_text(
        f"MDS_FB_ENABLE_HTTP_BROADCAST=true\nMDS_FB_FEEDBACK_WEBHOOK_URL={URL}\n"
    )
    async with coordinator():
        assert len(autowire.active_transports()) == 1
    assert [p["reason"] for p in posted(httpx_mock)] == ["stopped"]


async def test_disabled_by_default_starts_nothing() -> None:
    """With no MDS_FB_* variable nothing is wired and nothing is sent."""
    async with coordinator():
        assert autowire.active_transports() == ()


@pytest.mark.usefixtures("enabled")
async def test_stop_flush_is_bounded_by_the_stop_timeout(httpx_mock: HTTPXMock) -> None:
    """An endpoint that never answers: the last stop still returns, well within 5 s."""
    httpx_mock_gate = asyncio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        await httpx_mock_gate.wait()
        return httpx.Response(204)

    httpx_mock.add_callback(hang, is_reusable=True, is_optional=True)
    coord = coordinator()
    await coord.start()
    await asyncio.wait_for(coord.stop(timeout=0.3), timeout=5.0)
    assert autowire.active_transports() == ()


@pytest.mark.usefixtures("enabled")
def test_last_stop_on_another_threads_loop_flushes_the_broadcaster_on_its_own_loop(
    httpx_mock: HTTPXMock,
) -> None:
    """Started on thread A's loop, stopped last on thread B's: both 'stopped' events POSTed."""
    import threading

    httpx_mock.add_response(status_code=204, is_reusable=True)
    a_started, b_stopped = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    async def on_a() -> None:
        coord = coordinator("a")
        await coord.start()
        a_started.set()
        await coord.stop(timeout=5.0)  # not the last: the broadcaster keeps running
        await asyncio.to_thread(b_stopped.wait, 5.0)  # keep this loop up for B's flush

    async def on_b() -> None:
        await asyncio.to_thread(a_started.wait, 5.0)
        async with coordinator("b"):
            pass
        b_stopped.set()

    def run(main: object) -> None:
        try:
            asyncio.run(main)  # type: ignore[arg-type]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(m(),)) for m in (on_a, on_b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10.0)
    assert errors == []
    assert sorted((p["coordinator_id"], p["reason"]) for p in posted(httpx_mock)) == [
        ("a", "stopped"),
        ("b", "stopped"),
    ]


@pytest.mark.usefixtures("enabled")
async def test_concurrent_starts_of_one_coordinator_take_one_share(httpx_mock: HTTPXMock) -> None:
    """Two concurrent start() calls: one set of workers, and its stop stops the broadcaster."""
    httpx_mock.add_response(status_code=204, is_reusable=True)
    coord = coordinator()
    await asyncio.gather(coord.start(), coord.start())
    assert coord.health().workers_alive == 1
    await coord.stop(timeout=5.0)
    assert autowire.active_transports() == ()


@pytest.mark.usefixtures("enabled")
def test_coordinator_left_running_on_a_closed_loop_does_not_disable_the_webhook(
    httpx_mock: HTTPXMock,
) -> None:
    """A coordinator never stopped on a closed loop: the next loop's coordinator still POSTs."""
    httpx_mock.add_response(status_code=204, is_reusable=True)
    leaked = coordinator("leaked")

    async def leak() -> None:
        await leaked.start()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(leak())
    finally:
        loop.close()

    async def fresh() -> None:
        async with coordinator("fresh"):
            assert len(autowire.active_transports()) == 1

    asyncio.run(fresh())
    assert ("fresh", "stopped") in [(p["coordinator_id"], p["reason"]) for p in posted(httpx_mock)]
