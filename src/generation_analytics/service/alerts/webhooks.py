"""Webhook notifications: bodies (standard or Slack-compatible), Standard Webhooks signatures, and the
delivery job that posts the outbox (`alert_deliveries`) with retries and backoff.

Evaluation only inserts rows; this job claims the due ones with a lease (`next_attempt_at` pushed past
the request timeout, under FOR UPDATE SKIP LOCKED, so replicas never post the same row at once), posts
them concurrently with a timeout each (a dead target costs its own timeout, not the others'), and
records every attempt. A failed attempt is retried after retry_base_s x 2^(attempts - 1), at most
retry_max_s, until max_attempts; then the delivery is `failed`.

Signature (https://www.standardwebhooks.com): `webhook-signature: v1,<base64 HMAC-SHA256 of
"{webhook-id}.{webhook-timestamp}.{body}">` with the base64-decoded part of the `whsec_` secret; the
webhook-id stays the same across retries, so a receiver can drop duplicates.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import psycopg
from psycopg.rows import dict_row

from generation_analytics.service.alerts.rules import RuleSpec, describe, secret_bytes
from generation_analytics.service.settings import AlertSettings, PostgresSettings
from generation_analytics.vocabulary import AlertState, WebhookFormat

log = logging.getLogger(__name__)

USER_AGENT = "generation-analytics-alerts/1"
CLAIM_BATCH = 100
MAX_ERROR_CHARS = 500


def signature(secret: str, webhook_id: str, timestamp: int, body: str) -> str:
    """The `webhook-signature` header value for one message."""
    signed = f"{webhook_id}.{timestamp}.{body}".encode()
    digest = hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


_EMOJI = {AlertState.FIRING: ":rotating_light:", AlertState.RESOLVED: ":white_check_mark:", AlertState.ERROR: ":x:"}


@dataclass(frozen=True)
class Notice:
    """What a notification says: a rule's transition (or, `repeat`, a reminder that it still fires)."""

    rule_id: int
    spec: RuleSpec
    event_id: int
    at: datetime
    from_state: AlertState
    to_state: AlertState
    value: float | None
    samples: int
    message: str
    repeat: bool = False


def body(notice: Notice, fmt: WebhookFormat) -> str:
    """The JSON body posted for `notice`, as exactly the bytes that are signed."""
    spec = notice.spec
    if fmt is WebhookFormat.SLACK:
        value = "no value" if notice.value is None else f"{notice.value:.4g}"
        again = " (still firing)" if notice.repeat else ""
        text = (
            f"{_EMOJI.get(notice.to_state, '')} [{notice.to_state.value.upper()}]{again} {spec.name}: "
            f"{describe(spec)}; value {value} from {notice.samples} samples"
            + (f" ({notice.message})" if notice.message else "")
        )
        return json.dumps({"text": text.strip()}, separators=(",", ":"))
    data = {
        "rule_id": notice.rule_id,
        "rule_name": spec.name,
        "event_id": notice.event_id,
        "state": notice.to_state.value,
        "previous_state": notice.from_state.value,
        "repeat": notice.repeat,
        "value": notice.value,
        "samples": notice.samples,
        "metric": spec.metric.value,
        "scope": spec.scope.value,
        "scope_value": spec.scope_value,
        "comparison": spec.comparison.value,
        "threshold": spec.threshold,
        "window_minutes": spec.window_minutes,
        "labels": spec.labels,
        "summary": describe(spec),
        "message": notice.message,
    }
    envelope = {"type": f"alert.{notice.to_state.value}", "timestamp": notice.at.isoformat(), "data": data}
    return json.dumps(envelope, separators=(",", ":"), sort_keys=True)


INSERT_DELIVERY = """
INSERT INTO alert_deliveries (rule_id, event_id, webhook_id, url, format, secret, body, next_attempt_at, created_at)
VALUES (%(rule_id)s, %(event_id)s, %(webhook_id)s, %(url)s, %(format)s, %(secret)s, %(body)s, %(now)s, %(now)s)
"""


async def enqueue(conn: psycopg.AsyncConnection[Any], notice: Notice) -> int:
    """One outbox row per target of the rule, in the caller's transaction; how many."""
    for index, target in enumerate(notice.spec.targets):
        await conn.execute(
            INSERT_DELIVERY,
            {
                "rule_id": notice.rule_id, "event_id": notice.event_id,
                "webhook_id": f"msg_alert_{notice.event_id}_{index}", "url": target.url,
                "format": target.format.value, "secret": target.secret, "body": body(notice, target.format),
                "now": notice.at,
            },
        )  # fmt: skip
    return len(notice.spec.targets)


@dataclass
class DeliveryReport:
    attempted: int = 0
    delivered: int = 0
    failed: int = 0  # given up after max_attempts
    retrying: int = 0

    @property
    def processed(self) -> int:
        return self.attempted


# Due deliveries, leased: another sender skips them until the lease ends (a crashed sender's rows
# become due again then).
CLAIM_DUE = """
UPDATE alert_deliveries SET next_attempt_at = %(lease_until)s
WHERE id IN (
    SELECT id FROM alert_deliveries WHERE status = 'pending' AND next_attempt_at <= %(now)s
    ORDER BY next_attempt_at, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED
)
RETURNING id, webhook_id, url, secret, body, attempts
"""
RECORD_ATTEMPT = """
INSERT INTO alert_delivery_attempts (delivery_id, at, status_code, error, duration_ms)
VALUES (%(id)s, %(now)s, %(status_code)s, %(error)s, %(duration_ms)s)
"""
RECORD_RESULT = """
UPDATE alert_deliveries SET status = %(status)s, attempts = %(attempts)s, next_attempt_at = %(next_attempt_at)s,
       delivered_at = %(delivered_at)s, last_error = %(error)s
WHERE id = %(id)s
"""


@dataclass(frozen=True)
class _Result:
    status_code: int | None
    error: str
    duration_ms: float

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class WebhookSender:
    """Posts due deliveries; `run_once` is the scheduled job's body (time injectable for tests)."""

    def __init__(
        self,
        *,
        postgres: PostgresSettings,
        settings: AlertSettings,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._postgres = postgres
        self.settings = settings
        self._clock = clock

    def run(self) -> DeliveryReport:
        return asyncio.run(self.run_once())

    def backoff(self, attempts: int) -> timedelta:
        """The wait after the `attempts`-th failed attempt."""
        return timedelta(seconds=min(self.settings.retry_base_s * 2 ** (attempts - 1), self.settings.retry_max_s))

    async def run_once(self, now: datetime | None = None) -> DeliveryReport:
        now = now or self._clock()
        report = DeliveryReport()
        lease = timedelta(seconds=self.settings.webhook_timeout_s * 2 + 5)
        async with await psycopg.AsyncConnection.connect(
            self._postgres.dsn, connect_timeout=int(self._postgres.connect_timeout_s), autocommit=True
        ) as conn:
            async with conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(CLAIM_DUE, {"now": now, "lease_until": now + lease, "limit": CLAIM_BATCH})
                due = await cur.fetchall()
            if not due:
                return report
            timeout = aiohttp.ClientTimeout(total=self.settings.webhook_timeout_s)
            async with aiohttp.ClientSession(timeout=timeout, headers={"User-Agent": USER_AGENT}) as session:
                results = await asyncio.gather(*(self._post(session, row) for row in due))
            for row, result in zip(due, results, strict=True):
                attempts = row["attempts"] + 1
                report.attempted += 1
                if result.ok:
                    status, next_at, report.delivered = "delivered", now, report.delivered + 1
                elif attempts >= self.settings.max_attempts:
                    status, next_at, report.failed = "failed", now, report.failed + 1
                    log.warning("webhook %s to %s failed %d times; giving up: %s", row["webhook_id"], row["url"],
                                attempts, result.error)  # fmt: skip
                else:
                    status, next_at, report.retrying = "pending", now + self.backoff(attempts), report.retrying + 1
                async with conn.transaction():
                    attempt = {"id": row["id"], "now": now, "status_code": result.status_code, "error": result.error,
                               "duration_ms": result.duration_ms}  # fmt: skip
                    await conn.execute(RECORD_ATTEMPT, attempt)
                    await conn.execute(
                        RECORD_RESULT,
                        {"id": row["id"], "status": status, "attempts": attempts, "next_attempt_at": next_at,
                         "delivered_at": now if result.ok else None, "error": result.error},
                    )  # fmt: skip
        return report

    async def _post(self, session: aiohttp.ClientSession, row: dict[str, Any]) -> _Result:
        timestamp = int(time.time())  # the receiver checks it against its clock: always the real time
        headers = {
            "Content-Type": "application/json",
            "webhook-id": row["webhook_id"],
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(row["secret"], row["webhook_id"], timestamp, row["body"]),
        }
        started = time.perf_counter()
        try:
            async with session.post(row["url"], data=row["body"].encode(), headers=headers, allow_redirects=False) as r:
                await r.read()
                error = "" if 200 <= r.status < 300 else f"HTTP {r.status}"
                return _Result(r.status, error, (time.perf_counter() - started) * 1000)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:  # one dead target: its own result, no more
            error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
            return _Result(None, error, (time.perf_counter() - started) * 1000)
