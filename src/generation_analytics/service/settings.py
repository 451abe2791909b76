"""Settings for every dependency, read from the environment in exactly one place (`load_settings`)."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus, urlsplit

# Names of parameters that hold a secret, in libpq key=value strings and URL query strings (`password`,
# `sslpassword`, Redis' `?password=`, …). Over-matching only hides a harmless value; under-matching leaks.
_SECRET_NAME = re.compile(r"pass(word|wd)?|pwd|secret|token", re.IGNORECASE)
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_HIDDEN = "***"


def _hide_password(value: str) -> str:
    """Return `value` (a URL or a libpq key=value string) with every password replaced by `***`.

    Each form is parsed, not pattern-matched, so quoting and escaping cannot leave part of a secret
    behind: key=value strings with libpq's own parser (`user=u password='s3 cret'`), URLs with
    urllib (`postgresql://u:pw@h/d`, `redis://:pw@h/0`, `rediss://h/0?password=pw`). A string that
    fails to parse is cut off where a secret could start, so nothing after it is ever shown.
    """
    if not any(mark in value for mark in ("=", "@", "://")):
        return value  # no syntax that can hold a password (a host:port, a path, a word)
    try:
        hidden = _hide_in_url(value) if _URL_SCHEME.match(value) else _hide_in_conninfo(value)
    except ValueError:
        hidden = None
    return _hide_after_secret(value) if hidden is None else hidden


def _hide_in_url(url: str) -> str | None:
    """The password of the userinfo and every secret query parameter; None when the split is doubtful.

    An unescaped `#`, `?` or `/` inside a password makes urllib end the userinfo early (libpq reads
    such a URL differently), so a fragment, or an `@` left outside the host part, means "do not trust
    this split" and the caller falls back to hiding everything from where a secret could start.
    """
    parts = urlsplit(url)
    if "#" in url or "@" in parts.path + parts.query:
        return None
    netloc = parts.netloc
    userinfo, at, host = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:{_HIDDEN}@{host}"
    # Rebuilt by hand: urlunsplit drops the empty host of `postgresql:///db?host=/tmp`.
    query = f"?{_hide_in_query(parts.query)}" if parts.query else ""
    return f"{url[: url.index('://')]}://{netloc}{parts.path}{query}"


def _hide_in_query(query: str) -> str:
    # Segment by segment rather than parse_qsl + urlencode, so that every other parameter keeps its
    # exact spelling; names are compared decoded (`pass%77ord` is `password` too).
    segments = []
    for segment in re.split(r"([&;])", query):
        name, eq, _ = segment.partition("=")
        secret = eq and _SECRET_NAME.search(unquote_plus(name))
        segments.append(f"{name}={_HIDDEN}" if secret else segment)
    return "".join(segments)


def _hide_in_conninfo(dsn: str) -> str | None:
    """libpq's parse of a key=value string, rebuilt with the secrets hidden; None if it does not parse."""
    try:
        from psycopg import Error as PsycopgError
        from psycopg.conninfo import conninfo_to_dict, make_conninfo
    except ImportError:  # the client-only install: the fallback hides conservatively
        return None
    try:
        params = conninfo_to_dict(dsn)
        # libpq expands a `dbname` that is itself a connection string or URL: hide inside values too.
        hidden = {
            k: _HIDDEN if _SECRET_NAME.search(k) else _hide_password(v) if isinstance(v, str) else v
            for k, v in params.items()
        }
        return make_conninfo("", **hidden)
    except PsycopgError:
        return None


def _hide_after_secret(text: str) -> str:
    """The fallback for what does not parse: everything from where a secret could start is hidden —
    after the first secret-looking name, or after the `:` of a URL's userinfo — whichever comes first."""
    cuts = []
    name = _SECRET_NAME.search(text)
    if name:
        cuts.append((name.end(), "=" + _HIDDEN))
    scheme = _URL_SCHEME.match(text)
    start = scheme.end() if scheme else 0
    userinfo = text[start:].rpartition("@")[0]
    if ":" in userinfo:
        cuts.append((start + userinfo.index(":") + 1, _HIDDEN))
    if not cuts:
        return text
    cut, mask = min(cuts)
    return text[:cut] + mask


@dataclass(frozen=True, kw_only=True)
class PostgresSettings:
    """Where Postgres is and how many connections to hold. An empty `dsn` means "start an embedded one"."""

    dsn: str = ""
    # A streaming replica for the query RPCs (empty: queries read the primary). See service/replica.py.
    read_dsn: str = ""
    replica_retry_s: float = 5.0
    pool_min_size: int = 1
    pool_max_size: int = 8
    connect_timeout_s: float = 5.0

    @classmethod
    def from_dsn(cls, dsn: str, **kwargs: object) -> PostgresSettings:
        return cls(dsn=dsn, **kwargs)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        read = f", read_dsn={_hide_password(self.read_dsn)!r}" if self.read_dsn else ""
        return (
            f"PostgresSettings(dsn={_hide_password(self.dsn)!r}{read}, pool={self.pool_min_size}..{self.pool_max_size})"
        )


@dataclass(frozen=True, kw_only=True)
class RedisSettings:
    """Where Redis is and the key namespace. An empty `url` means "start an embedded one"."""

    url: str = ""
    namespace: str = "ga"
    # Recording must fail fast (UNAVAILABLE) rather than hang when Redis is gone.
    socket_timeout_s: float = 1.0
    # Acknowledged means replicated: with N > 0, recording answers OK only once N Redis replicas hold the
    # events (WAIT N), else UNAVAILABLE after `wait_timeout_ms` (the retry is deduplicated by event_id).
    # 0: OK once the Redis master holds them; a master lost before replicating loses what it acknowledged.
    wait_replicas: int = 0
    wait_timeout_ms: int = 500
    # The stream is split into this many shards (an event's shard follows its event_id); each has its own
    # consumer group and dead letters, and on Redis Cluster its own hash slot (service/stream.py).
    stream_shards: int = 1
    # `url` names one node of a Redis Cluster: slots are discovered from it and followed on MOVED.
    cluster: bool = False

    @classmethod
    def from_url(cls, url: str, **kwargs: object) -> RedisSettings:
        return cls(url=url, **kwargs)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        cluster = ", cluster=True" if self.cluster else ""
        shards = f", stream_shards={self.stream_shards}" if self.stream_shards != 1 else ""
        return f"RedisSettings(url={_hide_password(self.url)!r}, namespace={self.namespace!r}{cluster}{shards})"


@dataclass(frozen=True, kw_only=True)
class LimitSettings:
    """Input limits enforced by capture; documented in the proto and the README."""

    max_batch_events: int = 10_000
    max_string_chars: int = 128
    max_error_message_chars: int = 4_096
    max_attributes: int = 32
    max_attribute_key_chars: int = 64
    max_attribute_value_chars: int = 1_024
    max_future_skew_s: int = 300
    max_duration_ms: int = 7 * 24 * 3600 * 1000
    max_batch_size: int = 10_000
    max_message_bytes: int = 16 * 1024 * 1024
    # Refuse new events (RESOURCE_EXHAUSTED) when this many entries wait in the stream.
    max_stream_backlog: int = 5_000_000


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    """Network front ends."""

    listen_addr: str = "127.0.0.1:50051"
    http_addr: str = "127.0.0.1:8001"
    shutdown_grace_s: float = 5.0
    # Serving processes sharing the ports (SO_REUSEPORT): the kernel spreads connections over them.
    processes: int = 1


@dataclass(frozen=True, kw_only=True)
class AuthSettings:
    """Who may call what (docs/design.md §8). `mode`: "on", "off", or "auto" — on whenever a listener is
    not on a loopback address, so a laptop's `make run` needs no key while a shared server does."""

    mode: str = "auto"
    # Serving a non-loopback address with auth off is refused unless this says it is meant.
    allow_unauthenticated: bool = False
    # Keys are checked against an in-memory copy refreshed this often: a revoked key stops working within it.
    cache_s: float = 5.0


@dataclass(frozen=True, kw_only=True)
class TlsSettings:
    """TLS for gRPC and the HTTP gateway (PEM files). With `client_ca_file`, clients must present a
    certificate that CA signed (mTLS). All empty: plaintext (the loopback default)."""

    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)


@dataclass(frozen=True, kw_only=True)
class ScheduleSettings:
    """The in-process schedule of the pipeline jobs (the seed's cadence: transfer 600 s, aggregation 3600 s)."""

    enabled: bool = True
    transfer_interval_s: float = 2.0
    aggregation_interval_s: float = 3.0
    retention_interval_s: float = 3600.0


@dataclass(frozen=True, kw_only=True)
class TransferSettings:
    """Transfer: stream -> Postgres."""

    batch_size: int = 10_000
    # Threads storing batches in parallel (each on its own connection) while one thread decodes.
    store_workers: int = 2
    time_budget_s: float = 30.0
    # Entries a consumer left unacknowledged this long are taken over by another consumer.
    reclaim_idle_ms: int = 60_000
    # An entry delivered this many times without being stored is dead-lettered.
    max_deliveries: int = 5


@dataclass(frozen=True, kw_only=True)
class AggregationSettings:
    """Aggregation: dirty hours -> rollups."""

    # Dirty hours recomputed per transaction (a failing batch is split down to the hour that fails).
    batch_hours: int = 48
    time_budget_s: float = 30.0


@dataclass(frozen=True, kw_only=True)
class RetentionSettings:
    """How long raw events are kept. Capture refuses older timestamps; aggregation keeps (never
    recomputes) the rollups of hours older than this; retention deletes the raw rows."""

    days: int = 90
    batch_rows: int = 10_000


@dataclass(frozen=True)
class GpuPrices:
    """A price per GPU hour for each checkpoint, `default` (the `*` entry) for any other and for events
    without a checkpoint. Empty (no entries, no default): no price table, costs are not reported."""

    by_checkpoint: Mapping[str, float] = field(default_factory=dict)
    default: float | None = None

    @property
    def configured(self) -> bool:
        return bool(self.by_checkpoint) or self.default is not None

    def price(self, checkpoint: str | None) -> float:
        """Currency per GPU hour of `checkpoint` (0 when no price applies)."""
        found = self.by_checkpoint.get(checkpoint) if checkpoint else None
        if found is None:
            found = self.default
        return found or 0.0

    def cost(self, checkpoint: str | None, gpu_time_ms: int) -> float:
        return gpu_time_ms / MS_PER_HOUR * self.price(checkpoint)


MS_PER_HOUR = 3_600_000


def parse_gpu_prices(text: str, *, name: str = "GA_GPU_PRICES") -> GpuPrices:
    """`sdxl-1.0=2.5,flux-dev=4.0,*=1.0` (currency per GPU hour; `*` = any other checkpoint) as GpuPrices.

    Raises SettingsError for an entry without `=`, an empty or repeated checkpoint, or a price that is
    not a finite number >= 0. Spaces around names and prices are ignored; an empty text is no table.
    """
    prices: dict[str, float] = {}
    default: float | None = None
    for entry in filter(None, (part.strip() for part in text.split(","))):
        checkpoint, sep, raw = (piece.strip() for piece in entry.partition("="))
        if not sep or not checkpoint:
            raise SettingsError(f"{name}: {entry!r} is not CHECKPOINT=PRICE")
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{name}: price of {checkpoint!r} is not a number: {raw!r}") from None
        if not math.isfinite(value) or value < 0:
            raise SettingsError(f"{name}: price of {checkpoint!r} must be a finite number >= 0 (got {raw!r})")
        if checkpoint in prices or (checkpoint == "*" and default is not None):
            raise SettingsError(f"{name}: {checkpoint!r} is given twice")
        if checkpoint == "*":
            default = value
        else:
            prices[checkpoint] = value
    return GpuPrices(prices, default)


@dataclass(frozen=True, kw_only=True)
class PriceSettings:
    """What GPU time costs: the text of GA_GPU_PRICES (checked by `load_settings`; see parse_gpu_prices)."""

    gpu_prices: str = ""

    @property
    def table(self) -> GpuPrices:
        return parse_gpu_prices(self.gpu_prices)


@dataclass(frozen=True, kw_only=True)
class AlertSettings:
    """Alert evaluation and webhook delivery (README "Alerts"). Rules are evaluated once per tick of
    `interval_s` cluster-wide; deliveries are retried with exponential backoff from `retry_base_s` up to
    `retry_max_s`, `max_attempts` times in all."""

    enabled: bool = True
    interval_s: float = 60.0
    delivery_interval_s: float = 2.0
    webhook_timeout_s: float = 5.0
    max_attempts: int = 6
    retry_base_s: float = 10.0
    retry_max_s: float = 600.0


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the service needs, built once by `load_settings`; each component receives its sections."""

    postgres: PostgresSettings = field(default_factory=PostgresSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    transfer: TransferSettings = field(default_factory=TransferSettings)
    aggregation: AggregationSettings = field(default_factory=AggregationSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    prices: PriceSettings = field(default_factory=PriceSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    data_dir: Path = Path(".data")
    log_level: str = "INFO"

    @property
    def embedded(self) -> bool:
        """True when Postgres or Redis must be started in-process (no DSN / URL configured)."""
        return not self.postgres.dsn or not self.redis.url


# Environment variable -> (section, field). The README's settings table lists the same names.
ENVIRONMENT: dict[str, tuple[str, str]] = {
    "GA_POSTGRES_DSN": ("postgres", "dsn"),
    "GA_POSTGRES_POOL_MAX_SIZE": ("postgres", "pool_max_size"),
    "GA_POSTGRES_READ_DSN": ("postgres", "read_dsn"),
    "GA_READ_REPLICA_RETRY_S": ("postgres", "replica_retry_s"),
    "GA_REDIS_URL": ("redis", "url"),
    "GA_NAMESPACE": ("redis", "namespace"),
    "GA_REDIS_TIMEOUT_S": ("redis", "socket_timeout_s"),
    "GA_REDIS_WAIT_REPLICAS": ("redis", "wait_replicas"),
    "GA_REDIS_WAIT_TIMEOUT_MS": ("redis", "wait_timeout_ms"),
    "GA_REDIS_STREAM_SHARDS": ("redis", "stream_shards"),
    "GA_REDIS_CLUSTER": ("redis", "cluster"),
    "GA_LISTEN_ADDR": ("server", "listen_addr"),
    "GA_HTTP_ADDR": ("server", "http_addr"),
    "GA_SHUTDOWN_GRACE_S": ("server", "shutdown_grace_s"),
    "GA_SERVE_PROCESSES": ("server", "processes"),
    "GA_AUTH": ("auth", "mode"),
    "GA_ALLOW_UNAUTHENTICATED": ("auth", "allow_unauthenticated"),
    "GA_AUTH_CACHE_S": ("auth", "cache_s"),
    "GA_TLS_CERT": ("tls", "cert_file"),
    "GA_TLS_KEY": ("tls", "key_file"),
    "GA_TLS_CLIENT_CA": ("tls", "client_ca_file"),
    "GA_MAX_BATCH_EVENTS": ("limits", "max_batch_events"),
    "GA_MAX_STRING_CHARS": ("limits", "max_string_chars"),
    "GA_MAX_ERROR_MESSAGE_CHARS": ("limits", "max_error_message_chars"),
    "GA_MAX_ATTRIBUTES": ("limits", "max_attributes"),
    "GA_MAX_FUTURE_SKEW_S": ("limits", "max_future_skew_s"),
    "GA_MAX_MESSAGE_BYTES": ("limits", "max_message_bytes"),
    "GA_MAX_STREAM_BACKLOG": ("limits", "max_stream_backlog"),
    "GA_SCHEDULER_ENABLED": ("schedule", "enabled"),
    "GA_TRANSFER_INTERVAL_S": ("schedule", "transfer_interval_s"),
    "GA_AGGREGATION_INTERVAL_S": ("schedule", "aggregation_interval_s"),
    "GA_RETENTION_INTERVAL_S": ("schedule", "retention_interval_s"),
    "GA_TRANSFER_BATCH_SIZE": ("transfer", "batch_size"),
    "GA_TRANSFER_TIME_BUDGET_S": ("transfer", "time_budget_s"),
    "GA_TRANSFER_STORE_WORKERS": ("transfer", "store_workers"),
    "GA_RECLAIM_IDLE_MS": ("transfer", "reclaim_idle_ms"),
    "GA_MAX_DELIVERIES": ("transfer", "max_deliveries"),
    "GA_AGGREGATION_BATCH_HOURS": ("aggregation", "batch_hours"),
    "GA_RETENTION_DAYS": ("retention", "days"),
    "GA_GPU_PRICES": ("prices", "gpu_prices"),
    "GA_ALERTS_ENABLED": ("alerts", "enabled"),
    "GA_ALERTS_INTERVAL_S": ("alerts", "interval_s"),
    "GA_ALERTS_DELIVERY_INTERVAL_S": ("alerts", "delivery_interval_s"),
    "GA_ALERTS_WEBHOOK_TIMEOUT_S": ("alerts", "webhook_timeout_s"),
    "GA_ALERTS_MAX_ATTEMPTS": ("alerts", "max_attempts"),
    "GA_ALERTS_RETRY_BASE_S": ("alerts", "retry_base_s"),
    "GA_ALERTS_RETRY_MAX_S": ("alerts", "retry_max_s"),
    "GA_DATA_DIR": ("", "data_dir"),
    "GA_LOG_LEVEL": ("", "log_level"),
}


AUTH_MODES = ("auto", "on", "off")
# Every status read and transfer run visits each shard: far more shards than Redis masters buys nothing.
MAX_STREAM_SHARDS = 256


class SettingsError(ValueError):
    """An environment variable holds a value of the wrong type."""


def _convert(name: str, raw: str, current: object) -> object:
    if isinstance(current, bool):
        if raw.lower() in {"1", "true", "yes", "on"}:
            return True
        if raw.lower() in {"0", "false", "no", "off"}:
            return False
        raise SettingsError(f"{name}={raw!r}: expected true or false")
    try:
        if isinstance(current, int):
            return int(raw)
        if isinstance(current, float):
            return float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected a {type(current).__name__}") from None
    if isinstance(current, Path):
        return Path(raw)
    return raw


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build `Settings` from `environ` (default: `os.environ`); the only place the environment is read."""
    env = os.environ if environ is None else environ
    settings = Settings()
    sections: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for name, (section, attr) in ENVIRONMENT.items():
        raw = env.get(name)
        if raw is None or raw == "":
            continue
        owner = getattr(settings, section) if section else settings
        value = _convert(name, raw, getattr(owner, attr))
        if section:
            sections.setdefault(section, {})[attr] = value
        else:
            top[attr] = value
    for section, changes in sections.items():
        top[section] = replace(getattr(settings, section), **changes)
    result = replace(settings, **top)
    if result.server.processes < 1:
        raise SettingsError(f"GA_SERVE_PROCESSES={result.server.processes}: expected 1 or more")
    redis_settings = result.redis
    if redis_settings.wait_replicas < 0:
        raise SettingsError(f"GA_REDIS_WAIT_REPLICAS={redis_settings.wait_replicas}: expected 0 or more")
    if not 1 <= redis_settings.stream_shards <= MAX_STREAM_SHARDS:
        raise SettingsError(f"GA_REDIS_STREAM_SHARDS={redis_settings.stream_shards}: expected 1 to {MAX_STREAM_SHARDS}")
    if redis_settings.cluster and not redis_settings.url:
        raise SettingsError(
            "GA_REDIS_CLUSTER=true needs GA_REDIS_URL (a node of the cluster): the embedded Redis is one node"
        )
    if (redis_settings.cluster or redis_settings.stream_shards > 1) and set("{}") & set(redis_settings.namespace):
        raise SettingsError(
            f"GA_NAMESPACE={redis_settings.namespace!r}: braces would break the stream shards' hash tags"
        )
    if (
        redis_settings.wait_replicas
        and not 1 <= redis_settings.wait_timeout_ms < redis_settings.socket_timeout_s * 1000
    ):
        raise SettingsError(
            f"GA_REDIS_WAIT_TIMEOUT_MS={redis_settings.wait_timeout_ms}: expected 1 or more and less than"
            f" GA_REDIS_TIMEOUT_S ({redis_settings.socket_timeout_s} s), which would cut the WAIT short"
        )
    if result.auth.mode not in AUTH_MODES:
        raise SettingsError(f"GA_AUTH={result.auth.mode!r}: expected one of {', '.join(AUTH_MODES)}")
    if bool(result.tls.cert_file) != bool(result.tls.key_file):
        raise SettingsError("GA_TLS_CERT and GA_TLS_KEY go together")
    if result.tls.client_ca_file and not result.tls.cert_file:
        raise SettingsError("GA_TLS_CLIENT_CA (mTLS) needs GA_TLS_CERT and GA_TLS_KEY")
    parse_gpu_prices(result.prices.gpu_prices)  # refuse a bad table at start, not at the first question
    return result


def describe(settings: Settings) -> list[tuple[str, str]]:
    """(environment variable, effective value) pairs, secrets hidden; for `serve --print-settings`."""
    rows = []
    for name, (section, attr) in ENVIRONMENT.items():
        owner = getattr(settings, section) if section else settings
        value = getattr(owner, attr)
        rows.append((name, _hide_password(str(value)) if isinstance(value, str) else str(value)))
    return rows


__all__ = [
    "ENVIRONMENT",
    "AggregationSettings",
    "AlertSettings",
    "AuthSettings",
    "GpuPrices",
    "LimitSettings",
    "PostgresSettings",
    "PriceSettings",
    "RedisSettings",
    "RetentionSettings",
    "ScheduleSettings",
    "ServerSettings",
    "Settings",
    "SettingsError",
    "TlsSettings",
    "TransferSettings",
    "describe",
    "load_settings",
    "parse_gpu_prices",
]
