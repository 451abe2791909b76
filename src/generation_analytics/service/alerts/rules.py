"""Alert rules: their definition (validated, INVALID_ARGUMENT naming the field), their storage, and
webhook secrets (generated when not given, masked when listed)."""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from psycopg import AsyncConnection
from psycopg.errors import UniqueViolation
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from generation_analytics.service.alerts.measure import SCOPE_METRICS, STREAM_METRICS
from generation_analytics.service.errors import InvalidArgument, NotFound
from generation_analytics.vocabulary import AlertMetric, AlertScope, AlertState, Comparison, WebhookFormat

MAX_NAME_CHARS = 200
MAX_SCOPE_VALUE_CHARS = 128
MIN_WINDOW_MINUTES, MAX_WINDOW_MINUTES = 15, 7 * 24 * 60
MAX_PERIOD_S = 7 * 24 * 3600
MAX_LABELS, MAX_LABEL_CHARS = 32, 256
MAX_TARGETS, MAX_URL_CHARS = 10, 2_048
SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES, MAX_SECRET_BYTES = 24, 64


@dataclass(frozen=True)
class Target:
    url: str
    secret: str = ""
    format: WebhookFormat = WebhookFormat.STANDARD


@dataclass(frozen=True)
class RuleSpec:
    """What a rule says; `validate` checks it."""

    name: str
    metric: AlertMetric
    comparison: Comparison
    threshold: float
    window_minutes: int
    scope: AlertScope = AlertScope.EVERYTHING
    scope_value: str = ""
    min_samples: int = 0
    pending_for_s: int = 0
    repeat_interval_s: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    targets: tuple[Target, ...] = ()
    enabled: bool = True


@dataclass(frozen=True)
class Rule:
    """A stored rule and where it stands."""

    id: int
    spec: RuleSpec
    state: AlertState
    state_since: datetime
    last_value: float | None
    last_samples: int
    last_evaluated_at: datetime | None
    last_notified_at: datetime | None
    error: str
    created_at: datetime
    updated_at: datetime


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_bytes(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret (Standard Webhooks)."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)


def mask(secret: str) -> str:
    return f"{SECRET_PREFIX}…{secret[-4:]}" if secret else ""


def _text(value: str, field_name: str, max_chars: int, *, required: bool = False) -> str:
    if required and not value.strip():
        raise InvalidArgument(field_name, "is required")
    if len(value) > max_chars:
        raise InvalidArgument(field_name, f"longer than {max_chars} characters")
    if "\x00" in value:
        raise InvalidArgument(field_name, "must not contain a NUL character")
    return value


# An error group's fingerprint as ListErrorGroups gives it (service/fingerprints.py).
FINGERPRINT = re.compile(r"[0-9a-f]{16}")


def validate(spec: RuleSpec, field_prefix: str = "rule.") -> RuleSpec:
    """`spec` checked field by field (INVALID_ARGUMENT naming the first wrong one), with secrets generated."""
    f = field_prefix
    _text(spec.name, f"{f}name", MAX_NAME_CHARS, required=True)
    if spec.metric not in SCOPE_METRICS[spec.scope]:
        allowed = ", ".join(sorted(m.value for m in SCOPE_METRICS[spec.scope]))
        raise InvalidArgument(f"{f}metric", f"{spec.metric.value} cannot be measured for scope {spec.scope.value} "
                                            f"(allowed: {allowed})")  # fmt: skip
    if spec.scope is AlertScope.EVERYTHING:
        if spec.scope_value:
            raise InvalidArgument(f"{f}scope_value", "must be empty for scope everything")
    else:
        _text(spec.scope_value, f"{f}scope_value", MAX_SCOPE_VALUE_CHARS, required=True)
        if spec.scope is AlertScope.ERROR_GROUP and not FINGERPRINT.fullmatch(spec.scope_value):
            raise InvalidArgument(f"{f}scope_value", "must be an error group's fingerprint: 16 hex digits")
    if spec.threshold != spec.threshold or spec.threshold in (float("inf"), float("-inf")):
        raise InvalidArgument(f"{f}threshold", "must be a finite number")
    if not (MIN_WINDOW_MINUTES <= spec.window_minutes <= MAX_WINDOW_MINUTES and spec.window_minutes % 15 == 0):
        raise InvalidArgument(
            f"{f}window_minutes",
            f"must be a multiple of 15 from {MIN_WINDOW_MINUTES} to {MAX_WINDOW_MINUTES} (got {spec.window_minutes})",
        )
    if spec.min_samples < 0:
        raise InvalidArgument(f"{f}min_samples", "must not be negative")
    for name in ("pending_for_s", "repeat_interval_s"):
        if not 0 <= getattr(spec, name) <= MAX_PERIOD_S:
            raise InvalidArgument(f"{f}{name}", f"must be between 0 and {MAX_PERIOD_S} seconds")
    if len(spec.labels) > MAX_LABELS:
        raise InvalidArgument(f"{f}labels", f"at most {MAX_LABELS} labels")
    for key, value in spec.labels.items():
        _text(key, f"{f}labels", MAX_LABEL_CHARS, required=True)
        _text(value, f"{f}labels", MAX_LABEL_CHARS)
    if len(spec.targets) > MAX_TARGETS:
        raise InvalidArgument(f"{f}targets", f"at most {MAX_TARGETS} targets")
    targets = []
    for i, target in enumerate(spec.targets):
        where = f"{f}targets[{i}]"
        _text(target.url, f"{where}.url", MAX_URL_CHARS, required=True)
        parts = urlsplit(target.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidArgument(f"{where}.url", "must be an http:// or https:// URL with a host")
        secret = target.secret or new_secret()
        if not secret.startswith(SECRET_PREFIX):
            raise InvalidArgument(f"{where}.secret", f"must start with {SECRET_PREFIX}")
        try:
            size = len(secret_bytes(secret))
        except (binascii.Error, ValueError):
            raise InvalidArgument(f"{where}.secret", "must be whsec_ followed by base64") from None
        if not MIN_SECRET_BYTES <= size <= MAX_SECRET_BYTES:
            raise InvalidArgument(f"{where}.secret", f"must hold {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes")
        targets.append(replace(target, secret=secret))
    return replace(spec, targets=tuple(targets))


def _targets_json(targets: tuple[Target, ...]) -> Jsonb:
    return Jsonb([{"url": t.url, "secret": t.secret, "format": t.format.value} for t in targets])


def _spec_params(spec: RuleSpec) -> dict[str, Any]:
    return {
        "name": spec.name, "metric": spec.metric.value, "scope_kind": spec.scope.value,
        "scope_value": spec.scope_value, "comparison": spec.comparison.value, "threshold": spec.threshold,
        "window_minutes": spec.window_minutes, "min_samples": spec.min_samples, "pending_for_s": spec.pending_for_s,
        "repeat_interval_s": spec.repeat_interval_s, "labels": Jsonb(spec.labels),
        "targets": _targets_json(spec.targets), "enabled": spec.enabled,
    }  # fmt: skip


RULE_COLUMNS = """r.id, r.name, r.metric, r.scope_kind, r.scope_value, r.comparison, r.threshold, r.window_minutes,
       r.min_samples, r.pending_for_s, r.repeat_interval_s, r.labels, r.targets, r.enabled, r.created_at,
       r.updated_at, s.state, s.since, s.value, s.samples, s.evaluated_at, s.last_notified_at, s.error"""
SELECT_RULES = f"""
SELECT {RULE_COLUMNS} FROM alert_rules AS r JOIN alert_state AS s ON s.rule_id = r.id
WHERE %(id)s::bigint IS NULL OR r.id = %(id)s ORDER BY r.id
"""


def spec_from_row(row: dict[str, Any]) -> RuleSpec:
    return RuleSpec(
        name=row["name"],
        metric=AlertMetric(row["metric"]),
        comparison=Comparison(row["comparison"]),
        threshold=row["threshold"],
        window_minutes=row["window_minutes"],
        scope=AlertScope(row["scope_kind"]),
        scope_value=row["scope_value"],
        min_samples=row["min_samples"],
        pending_for_s=row["pending_for_s"],
        repeat_interval_s=row["repeat_interval_s"],
        labels=dict(row["labels"]),
        targets=tuple(Target(t["url"], t["secret"], WebhookFormat(t["format"])) for t in row["targets"]),
        enabled=row["enabled"],
    )


def rule_from_row(row: dict[str, Any]) -> Rule:
    return Rule(
        id=row["id"], spec=spec_from_row(row), state=AlertState(row["state"]), state_since=row["since"],
        last_value=row["value"], last_samples=row["samples"], last_evaluated_at=row["evaluated_at"],
        last_notified_at=row["last_notified_at"], error=row["error"], created_at=row["created_at"],
        updated_at=row["updated_at"],
    )  # fmt: skip


def masked(rule: Rule) -> Rule:
    """The rule as listed: secrets masked."""
    targets = tuple(replace(t, secret=mask(t.secret)) for t in rule.spec.targets)
    return replace(rule, spec=replace(rule.spec, targets=targets))


async def list_rules(conn: AsyncConnection[Any], rule_id: int | None = None) -> list[Rule]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(SELECT_RULES, {"id": rule_id})
        return [rule_from_row(row) for row in await cur.fetchall()]


async def get_rule(conn: AsyncConnection[Any], rule_id: int, field_name: str = "id") -> Rule:
    if rule_id <= 0:
        raise InvalidArgument(field_name, "must be a rule id (positive)")
    found = await list_rules(conn, rule_id)
    if not found:
        raise NotFound(f"no alert rule with id {rule_id}")
    return found[0]


INSERT_RULE = """
WITH rule AS (
    INSERT INTO alert_rules (name, metric, scope_kind, scope_value, comparison, threshold, window_minutes,
                             min_samples, pending_for_s, repeat_interval_s, labels, targets, enabled)
    VALUES (%(name)s, %(metric)s, %(scope_kind)s, %(scope_value)s, %(comparison)s, %(threshold)s,
            %(window_minutes)s, %(min_samples)s, %(pending_for_s)s, %(repeat_interval_s)s, %(labels)s,
            %(targets)s, %(enabled)s)
    RETURNING id
)
INSERT INTO alert_state (rule_id) SELECT id FROM rule RETURNING rule_id
"""


async def create_rule(conn: AsyncConnection[Any], spec: RuleSpec) -> Rule:
    """Store a validated rule; a name already taken is INVALID_ARGUMENT on rule.name."""
    try:
        async with conn.transaction():
            row = await (await conn.execute(INSERT_RULE, _spec_params(spec))).fetchone()
    except UniqueViolation:
        raise InvalidArgument("rule.name", f"a rule named {spec.name!r} exists already") from None
    assert row is not None
    return await get_rule(conn, int(row[0]))


UPDATE_RULE = """
UPDATE alert_rules SET name = %(name)s, metric = %(metric)s, scope_kind = %(scope_kind)s,
       scope_value = %(scope_value)s, comparison = %(comparison)s, threshold = %(threshold)s,
       window_minutes = %(window_minutes)s, min_samples = %(min_samples)s, pending_for_s = %(pending_for_s)s,
       repeat_interval_s = %(repeat_interval_s)s, labels = %(labels)s, targets = %(targets)s,
       enabled = %(enabled)s, updated_at = now()
WHERE id = %(id)s
"""


def keep_secrets(spec: RuleSpec, before: RuleSpec) -> RuleSpec:
    """Targets given without a secret keep the secret of the existing target with the same url."""
    known = {t.url: t.secret for t in before.targets}
    return replace(
        spec, targets=tuple(t if t.secret else replace(t, secret=known.get(t.url, "")) for t in spec.targets)
    )


async def update_rule(conn: AsyncConnection[Any], rule_id: int, spec: RuleSpec) -> Rule:
    before = await get_rule(conn, rule_id)
    spec = validate(keep_secrets(spec, before.spec))
    try:
        async with conn.transaction():
            await conn.execute(UPDATE_RULE, _spec_params(spec) | {"id": rule_id})
    except UniqueViolation:
        raise InvalidArgument("rule.name", f"a rule named {spec.name!r} exists already") from None
    return await get_rule(conn, rule_id)


DELETE_RULE = "DELETE FROM alert_rules WHERE id = %(id)s"


async def delete_rule(conn: AsyncConnection[Any], rule_id: int) -> None:
    if rule_id <= 0:
        raise InvalidArgument("id", "must be a rule id (positive)")
    async with conn.transaction():
        cur = await conn.execute(DELETE_RULE, {"id": rule_id})
    if cur.rowcount == 0:
        raise NotFound(f"no alert rule with id {rule_id}")


def describe(spec: RuleSpec) -> str:
    """One line a person reads: `failure_rate_pct of checkpoint sdxl > 10 over 15 min`."""
    scope = "everything" if spec.scope is AlertScope.EVERYTHING else f"{spec.scope.value} {spec.scope_value}"
    signs = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    window = "" if spec.metric in STREAM_METRICS else f" over {spec.window_minutes} min"
    return f"{spec.metric.value} of {scope} {signs[spec.comparison.value]} {spec.threshold:g}{window}"
