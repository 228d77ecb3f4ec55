"""Process-wide feedback transports wired from ``FeedbackSettings`` (environment or ``.env``).

The first ``WriteCoordinator`` started on the process-wide bus calls ``acquire()``: it reads
``FeedbackSettings`` once, builds every transport the settings enable (one entry of
``TRANSPORTS`` each: the webhook now, the Redis publisher later) and starts them on that
coordinator's event loop. Each later coordinator only takes a reference. The last one to
stop calls ``Lease.release(timeout)``: the bus is flushed, so its final ``stopped`` event is
handed to the transports, and they are stopped (each sending what it still holds) within
``timeout``. A coordinator with its own ``bus=`` is not wired.

Transports are deduplicated by ``transport_key`` (kind, URL): a transport with the same key
already subscribed to the bus (say, a broadcaster the application started itself) means no
second one, so no event is ever POSTed twice.

The transports run on the loop of the coordinator that started them; with coordinators on
several loops, keep that loop running until the last of them stops.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from loguru import logger

from market_data_store._logging import log_exception
from market_data_store.feedback.bus import FeedbackBus, feedback_bus
from market_data_store.feedback.settings import FeedbackSettings, redact_url


@runtime_checkable
class FeedbackTransport(Protocol):
    """What auto-wiring needs of a transport: a dedup key, ``start()`` and ``stop(timeout)``."""

    @property
    def transport_key(self) -> tuple[str, str]:
        """``(kind, url)``: two transports with the same key would deliver every event twice."""
        ...

    async def start(self) -> None: ...

    async def stop(self, timeout: float = ...) -> None: ...


TransportFactory = Callable[[FeedbackSettings, FeedbackBus], FeedbackTransport | None]
"""Builds a transport from the settings (unstarted), or None when the settings disable it."""


def _webhook(settings: FeedbackSettings, bus: FeedbackBus) -> FeedbackTransport | None:
    from market_data_store.feedback.http_broadcast import HttpFeedbackBroadcaster

    return HttpFeedbackBroadcaster.from_settings(settings, bus=bus)


def _redis(settings: FeedbackSettings, bus: FeedbackBus) -> FeedbackTransport | None:
    from market_data_store.feedback.redis_transport import RedisFeedbackPublisher

    return RedisFeedbackPublisher.from_settings(settings, bus=bus)


TRANSPORTS: dict[str, TransportFactory] = {
    "webhook": _webhook,
    "redis": _redis,
}
"""Every transport auto-wiring knows, by kind; a new transport is one entry here."""


@dataclass
class _Wiring:
    """The process-wide state: how many coordinators hold a lease and what they started."""

    users: int = 0
    transports: list[FeedbackTransport] = field(default_factory=list)
    stopping: list[FeedbackTransport] = field(default_factory=list)
    starting: asyncio.Future[None] | None = None
    loop: asyncio.AbstractEventLoop | None = None  # where the transports run
    generation: int = 0  # bumped when transports left on a closed loop are written off
    lock: threading.Lock = field(default_factory=threading.Lock)


_WIRING = _Wiring()


class Lease:
    """One coordinator's share of the process-wide transports; ``release`` once at stop."""

    __slots__ = ("_bus", "_generation", "_released")

    def __init__(self, bus: FeedbackBus, generation: int) -> None:
        self._bus = bus
        self._generation = generation
        self._released = False

    async def release(self, timeout: float) -> None:
        """Give the share back; the last one flushes and stops the transports in ``timeout``."""
        if self._released:
            return
        self._released = True
        wiring = _WIRING
        with wiring.lock:
            if self._generation != wiring.generation:
                return  # its transports were written off with their closed loop
            wiring.users -= 1
            if wiring.users > 0:
                return
            transports, wiring.transports = wiring.transports, []
            home, wiring.loop = wiring.loop, None
            wiring.stopping.extend(transports)
        timeout = max(0.0, timeout)
        try:
            if home is None or home is asyncio.get_running_loop():
                await _stop_all(self._bus, transports, timeout)
            elif home.is_running():  # started by a coordinator on another thread's loop
                stopping = asyncio.run_coroutine_threadsafe(
                    _stop_all(self._bus, transports, timeout), home
                )
                await asyncio.wait([asyncio.wrap_future(stopping)], timeout=timeout + 1.0)
            else:
                logger.warning(
                    "feedback auto-wiring: the loop running the transports has stopped; "
                    "their last events are not sent"
                )
        finally:
            with wiring.lock:
                for transport in transports:
                    wiring.stopping.remove(transport)


async def acquire(bus: FeedbackBus | None) -> Lease | None:
    """Take a share of the process-wide transports for a coordinator about to start.

    Returns None for a coordinator with its own bus. The first share reads
    ``FeedbackSettings`` and starts the transports; its ``ConfigError`` propagates (the
    coordinator then does not start).
    """
    process_bus = feedback_bus()
    if bus is not None and bus is not process_bus:
        return None
    wiring = _WIRING
    loop = asyncio.get_running_loop()
    while (starting := wiring.starting) is not None and not starting.done():
        if starting.get_loop() is not loop:
            break  # started from another thread's loop: nothing to wait on here
        await asyncio.shield(starting)
    with wiring.lock:
        if wiring.loop is not None and wiring.loop.is_closed():
            # Coordinators left running on a loop that closed: nothing of theirs can run
            # again, so this coordinator starts afresh.
            logger.warning("feedback auto-wiring: transports left on a closed loop replaced")
            for dead in wiring.transports:
                process_bus.unsubscribe(dead)  # type: ignore[arg-type]  # they subscribed
            wiring.transports, wiring.loop, wiring.users = [], None, 0
            wiring.generation += 1
        wiring.users += 1
        generation = wiring.generation
        if wiring.users > 1:
            return Lease(process_bus, generation)
        wiring.starting = loop.create_future()
    try:
        wiring.transports = await _start_all(process_bus)
        wiring.loop = loop
    except BaseException:
        with wiring.lock:
            wiring.users -= 1
        raise
    finally:
        wiring.starting.set_result(None)
    return Lease(process_bus, generation)


async def release(lease: Lease | None, timeout: float = 0.0) -> None:
    """``lease.release(timeout)`` when there is a lease (None: nothing was acquired)."""
    if lease is not None:
        await lease.release(timeout)


def active_transports() -> tuple[FeedbackTransport, ...]:
    """The transports auto-wiring has running now (for health checks and tests)."""
    with _WIRING.lock:
        return tuple(_WIRING.transports)


async def _start_all(bus: FeedbackBus) -> list[FeedbackTransport]:
    settings = FeedbackSettings()
    stopping = {id(transport) for transport in _WIRING.stopping}
    running = {
        key
        for sub in bus.subscribers()
        if (key := getattr(sub, "transport_key", None)) is not None and id(sub) not in stopping
    }
    started: list[FeedbackTransport] = []
    try:
        for kind, factory in TRANSPORTS.items():
            transport = factory(settings, bus)
            if transport is None:
                continue
            if transport.transport_key in running:
                logger.debug("feedback auto-wiring: a {} transport is already running", kind)
                continue
            await transport.start()
            running.add(transport.transport_key)
            started.append(transport)
            logger.info(
                "feedback auto-wiring: {} transport to {} started",
                kind,
                redact_url(transport.transport_key[1]),
            )
    except BaseException:
        await _stop_all(bus, started, 0.0)
        raise
    return started


async def _stop_all(bus: FeedbackBus, transports: list[FeedbackTransport], timeout: float) -> None:
    if not transports:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        await bus.flush(timeout=timeout)  # the final "stopped" event reaches the transports
    except TimeoutError:
        logger.debug("feedback auto-wiring: bus not flushed within {} s", timeout)
    remaining = max(0.0, deadline - loop.time())
    results = await asyncio.gather(
        *(transport.stop(timeout=remaining) for transport in transports), return_exceptions=True
    )
    for transport, result in zip(transports, results, strict=True):
        if isinstance(result, BaseException):
            log_exception(
                "WARNING",
                result,
                "feedback auto-wiring: stopping {} failed",
                transport.transport_key[0],
            )
