"""What the Redis publisher and listener share: wire format, the newer-event rule, checks,
metrics and outage reporting. Imports nothing from the ``redis`` package.

The newer-event rule (``is_newer``), applied by the publisher's Lua script to the hash and by
every listener to what it republishes: events of one coordinator are ordered by ``(ts, seq)``,
the creation time first and ``seq`` between events stamped in the same instant. Within one
life of a coordinator ``ts`` and ``seq`` rise together, so this is ``seq`` order and a repeat
or an older ``seq`` is stale. A restarted coordinator (after its ``stopped`` event or a crash)
starts ``seq`` again from 1 with a later ``ts``, so its events are newer, and a straggler of
the old life arriving afterwards (higher ``seq``, earlier ``ts``) is stale. This assumes the
clocks of the store hosts agree (NTP) to better than the time a coordinator takes to
restart; a clock stepped backwards holds a coordinator's events back until it has caught up.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from loguru import logger
from prometheus_client import Counter, Gauge

from market_data_store._validation import check_int, check_range
from market_data_store.errors import ConfigError
from market_data_store.feedback.events import FeedbackEvent
from market_data_store.feedback.receiver import parse_event
from market_data_store.feedback.settings import redact_url

DEFAULT_CHANNEL = "mds:feedback"
MAX_CHANNEL_LEN = 256

REDIS_CONNECTED = Gauge(
    "mds_feedback_redis_connected",
    "Redis feedback publishers and listeners of this process connected now",
    ["role"],
)
REDIS_PUBLISHED = Counter(
    "mds_feedback_redis_published", "Feedback events written to Redis (hash and channel)"
)
REDIS_RECEIVED = Counter(
    "mds_feedback_redis_received", "Feedback events from Redis republished into the local bus"
)
REDIS_DROPPED = Counter(
    "mds_feedback_redis_dropped",
    "Feedback events the Redis transport did not pass on, by role and reason",
    ["role", "reason"],
)

# One call writes a batch of events: for each, HSET and PUBLISH only when it is newer than
# the hash entry of its coordinator (the rule in the module docstring). A script runs
# atomically, so no reader ever sees the hash and the channel disagree.
PUBLISH_SCRIPT = """
local written = 0
for i = 2, #ARGV do
  local payload = ARGV[i]
  local event = cjson.decode(payload)
  local newer = true
  local current = redis.call('HGET', KEYS[1], event.coordinator_id)
  if current then
    local ok, last = pcall(cjson.decode, current)
    if ok and type(last) == 'table' and tonumber(last.seq) and tonumber(last.ts) then
      local ts = tonumber(last.ts)
      newer = event.ts > ts or (event.ts == ts and event.seq > tonumber(last.seq))
    end
  end
  if newer then
    redis.call('HSET', KEYS[1], event.coordinator_id, payload)
    redis.call('PUBLISH', ARGV[1], payload)
    written = written + 1
  end
end
return written
"""


def is_newer(event: FeedbackEvent, last: FeedbackEvent | None) -> bool:
    """Whether ``event`` supersedes ``last`` of the same coordinator (module docstring)."""
    if last is None or event.ts > last.ts:
        return True
    return event.ts == last.ts and event.seq > last.seq


def latest_key(channel: str) -> str:
    """The hash holding the latest event per coordinator for ``channel``."""
    return f"{channel}:latest"


def decode_event(raw: bytes | str) -> FeedbackEvent:
    """Parse a payload written by ``encode_event`` (the webhook receiver's parser);
    ``ValueError`` (``InvalidFeedbackError``) when it is not one."""
    return parse_event(raw.encode() if isinstance(raw, str) else raw)


def check_redis_url(name: str, url: object) -> None:
    """Raise ``ConfigError`` naming ``name`` unless ``url`` is a usable Redis URL.

    ``redis://`` or ``rediss://`` with a host (port 1-65535 if given) or ``unix://`` with a
    path; no whitespace or control characters. The message never contains the password.
    """
    if not isinstance(url, str):
        raise ConfigError(f"{name} must be a redis:// URL string, got {type(url).__name__}")
    shown = redact_url(url)
    if not url or any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise ConfigError(f"{name} must be a redis:// URL without whitespace, got {shown!r}")
    try:
        parts = urlsplit(url)
        host, port, scheme = parts.hostname, parts.port, parts.scheme
    except ValueError:  # a port that is not a number or out of range, an unclosed bracket
        raise ConfigError(
            f"{name} must be a redis:// URL with a host and a port in 1..65535, got {shown!r}"
        ) from None
    if scheme == "unix":
        if not parts.path:
            raise ConfigError(f"{name} must name a socket path after unix://, got {shown!r}")
        return
    if scheme not in ("redis", "rediss") or not host:
        raise ConfigError(
            f"{name} must be a redis://, rediss:// or unix:// URL with a host, got {shown!r}"
        )
    if port == 0:
        raise ConfigError(f"{name} must have a port in 1..65535, got {shown!r}")


def check_redis_channel(name: str, channel: object) -> None:
    """Raise ``ConfigError`` naming ``name`` unless ``channel`` is 1-256 printable characters."""
    if not isinstance(channel, str):
        raise ConfigError(f"{name} must be a string, got {type(channel).__name__}")
    if not 1 <= len(channel) <= MAX_CHANNEL_LEN or any(
        ch.isspace() or not ch.isprintable() for ch in channel
    ):
        raise ConfigError(
            f"{name} must be 1..{MAX_CHANNEL_LEN} printable characters without spaces, "
            f"got {channel!r}"
        )


def check_seconds(name: str, value: object, *, positive: bool = True) -> float:
    """A finite number of seconds (> 0, or >= 0 when not ``positive``), else ``ConfigError``."""
    check_range(name, value, lo=0, lo_open=positive)  # type: ignore[arg-type]  # checks it
    return float(value)  # type: ignore[arg-type]


def check_count(name: str, value: object, *, lo: int = 1) -> int:
    """An integer >= ``lo``, else ``ConfigError`` naming ``name``."""
    check_int(name, value, lo=lo)
    assert isinstance(value, int)
    return value


def require_redis_package(what: str) -> None:
    """``ConfigError`` saying to install the extra when the ``redis`` package is missing."""
    try:
        import redis.asyncio  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"{what} needs the redis package: install market-data-store-asyncio[redis]"
        ) from None


class Outage:
    """Connection state of one client: the gauge, one WARNING per outage, an INFO at the end."""

    def __init__(self, role: str, url: str) -> None:
        self._role = role
        self._shown_url = redact_url(url)
        self._gauge = REDIS_CONNECTED.labels(role)
        self.connected = False
        self.failures = 0
        self.outages = 0
        self._since: float | None = None

    def up(self) -> None:
        """A command succeeded: count as connected, close the outage if one was open."""
        if self._since is not None:
            logger.info(
                "feedback Redis {}: connected again to {} after {:.1f} s",
                self._role,
                self._shown_url,
                time.monotonic() - self._since,
            )
            self._since = None
        self.failures = 0
        if not self.connected:
            self.connected = True
            self._gauge.inc()

    def down(self, exc: BaseException) -> None:
        """A command failed: one WARNING when the outage starts, DEBUG for the rest."""
        self.failures += 1
        if self.connected:
            self.connected = False
            self._gauge.dec()
        if self._since is None:
            self._since = time.monotonic()
            self.outages += 1
            logger.warning(
                "feedback Redis {}: cannot reach {} ({}); retrying with backoff",
                self._role,
                self._shown_url,
                type(exc).__name__,
            )
        else:
            logger.debug(
                "feedback Redis {}: attempt {} failed: {!r}", self._role, self.failures, exc
            )

    def close(self) -> None:
        """The client is stopping: it no longer counts as connected."""
        if self.connected:
            self.connected = False
            self._gauge.dec()
