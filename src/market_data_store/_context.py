"""``async with`` for the library's lifecycle objects, written once."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class AsyncStartStop:
    """``async with obj`` awaits ``obj.start()`` on entry and ``obj.stop()`` on exit."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


class AsyncOpenClose:
    """``async with obj`` awaits ``obj.open()`` on entry and ``obj.close()`` on exit."""

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
