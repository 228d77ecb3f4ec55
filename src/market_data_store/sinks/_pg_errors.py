"""What a PostgreSQL failure means for a batch, and keeping DSN passwords out of messages.

The rule (DESIGN section 5: an unknown driver exception is retryable): only a failure caused
by the batch's own content is permanent, so that splitting the batch isolates it; everything
else is retryable, because a retry, a breaker probe or the drain deadline's dead-lettering
loses nothing, while a permanent verdict on a passing outage dead-letters good bars.

Permanent: SQLSTATE class 22 (data exception: invalid text, numeric out of range, NUL bytes
``\\x00``, string too long, ...), class 23 (integrity: a CHECK the bar violates), and values
the client cannot encode (asyncpg's client-side ``DataError``, ``TypeError``, ``ValueError``,
``OverflowError``). Retryable: every other SQLSTATE (connection 08, serialization and deadlock
40, ``too many connections`` 53300, lock timeouts 55, admin or crash shutdown and statement
timeouts 57, I/O 58, internal XX, privileges and missing tables 42 until an operator fixes
them), lost connections, OS errors, timeouts and any exception not listed here.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

from market_data_store.coordinator.types import PermanentSinkError, RetryableSinkError, SinkError

PERMANENT_SQLSTATE_CLASSES = frozenset({"22", "23"})
# After these the connection cannot be trusted: the pool must replace idle ones too.
BROKEN_CONNECTION_SQLSTATE_CLASSES = frozenset({"08", "57"})

MASK = "***"
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def dsn_password(dsn: str) -> str | None:
    """The password in ``dsn`` (URL or ``key=value`` form), or None."""
    if "://" in dsn:
        try:
            password = urlsplit(dsn).password
        except ValueError:
            password = None
        if password:
            return password
    match = _KEYWORD_PASSWORD.search(dsn)
    if match is None:
        return None
    return match.group(2).strip("'") or None


class Redactor:
    """Replaces a DSN's password, wherever it appears in a text, with ``***``."""

    __slots__ = ("_secrets",)

    def __init__(self, dsn: str) -> None:
        secrets: set[str] = set()
        password = dsn_password(dsn)
        if password:
            # A URL carries it percent-encoded, the driver's messages decoded: mask both.
            secrets.update({password, unquote(password)})
        # Longest first, so a password containing another secret is masked whole.
        self._secrets = tuple(sorted(secrets, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return _KEYWORD_PASSWORD.sub(rf"\g<1>{MASK}", text)


def classify(exc: BaseException, redact: Redactor) -> tuple[SinkError, bool]:
    """``(sink error, connection broken)`` for any exception a write or read raised."""
    import asyncpg
    from asyncpg.exceptions import _base as asyncpg_base

    if isinstance(exc, SinkError):
        return exc, False
    text = redact(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = str(getattr(exc, "sqlstate", "") or "")
        klass = sqlstate[:2]
        if klass in PERMANENT_SQLSTATE_CLASSES:
            return PermanentSinkError(f"PostgreSQL rejected the batch ({sqlstate}): {text}"), False
        broken = klass in BROKEN_CONNECTION_SQLSTATE_CLASSES
        return RetryableSinkError(f"PostgreSQL {sqlstate or 'error'}: {text}"), broken
    if isinstance(exc, asyncpg_base.DataError | TypeError | ValueError | OverflowError):
        return PermanentSinkError(f"a bar could not be encoded: {text}"), False
    if isinstance(exc, asyncpg.InterfaceError | OSError | TimeoutError | EOFError):
        return RetryableSinkError(f"PostgreSQL connection: {text}"), True
    # Unknown: retryable, as the coordinator's own classifier would have it; the pool may
    # hold a connection in an unknown state, so it is replaced too.
    return RetryableSinkError(f"PostgreSQL write failed (unrecognised, retrying): {text}"), True
