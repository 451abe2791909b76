"""API keys: their format, their scopes, and their table (`api_keys`, migration 0006).

A key reads `ga_<id>_<secret>`: a recognisable prefix (secret scanners and people can tell one at a
glance), a public id (what `keys list` and the logs show), and 32 random bytes. Only sha256(secret) is
stored: the secret is shown once, when the key is created. Random 256-bit secrets need no slow hash.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import psycopg

PREFIX = "ga"


class Scope(StrEnum):
    """What a key may do (docs/design.md §8)."""

    INGEST = "ingest"  # record events (EventService)
    READ = "read"  # ask questions, pipeline status, every HTTP GET, /metrics
    ADMIN = "admin"  # run the pipeline by hand (RunTransfer, RunAggregation)


@dataclass(frozen=True)
class ApiKey:
    """A stored key (never its secret)."""

    id: str
    name: str
    scopes: frozenset[Scope]
    secret_hash: bytes
    created_at: datetime | None = None
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None

    def matches(self, secret: str) -> bool:
        return hmac.compare_digest(self.secret_hash, digest(secret))


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def parse(token: str) -> tuple[str, str] | None:
    """(id, secret) of a key as presented, or None when it is not shaped like one."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2] or len(token) > 200:
        return None
    return parts[1], parts[2]


def parse_scopes(text: str | Iterable[str]) -> frozenset[Scope]:
    """Scopes from "ingest,read" (or a list); ValueError naming the unknown one."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if not names:
        raise ValueError(f"give at least one scope ({', '.join(Scope)})")
    try:
        return frozenset(Scope(n) for n in names)
    except ValueError as exc:
        raise ValueError(f"unknown scope ({exc}); scopes are {', '.join(Scope)}") from None


INSERT_KEY = "INSERT INTO api_keys (id, name, scopes, secret_hash) VALUES (%s, %s, %s, %s) RETURNING created_at"
SELECT_KEYS = """
SELECT id, name, scopes, secret_hash, created_at, last_used_at, revoked_at FROM api_keys ORDER BY created_at, id
"""
SELECT_LIVE_KEYS = "SELECT id, name, scopes, secret_hash FROM api_keys WHERE revoked_at IS NULL"
SELECT_LIVE_KEY = SELECT_LIVE_KEYS + " AND id = %s"
REVOKE_KEY = "UPDATE api_keys SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL RETURNING id"
MARK_USED = "UPDATE api_keys SET last_used_at = now() WHERE id = ANY(%s)"


def key_from_row(row: Sequence[Any]) -> ApiKey:
    """An ApiKey from a row of SELECT_KEYS or SELECT_LIVE_KEYS."""
    return ApiKey(row[0], row[1], frozenset(Scope(s) for s in row[2]), bytes(row[3]), *row[4:])


def create_key(conn: psycopg.Connection[Any], *, name: str, scopes: frozenset[Scope]) -> tuple[ApiKey, str]:
    """A new key and its token (the only time the secret exists outside the caller's hands)."""
    if not name.strip():
        raise ValueError("give the key a name (who or what uses it)")
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    row = conn.execute(INSERT_KEY, (key_id, name, sorted(scopes), digest(secret))).fetchone()
    conn.commit()
    key = ApiKey(key_id, name, scopes, digest(secret), created_at=row[0] if row else None)
    return key, f"{PREFIX}_{key_id}_{secret}"


def list_keys(conn: psycopg.Connection[Any]) -> list[ApiKey]:
    return [key_from_row(row) for row in conn.execute(SELECT_KEYS).fetchall()]


def revoke_key(conn: psycopg.Connection[Any], key_id: str) -> bool:
    """Revoke a key; False when no live key has that id."""
    revoked = conn.execute(REVOKE_KEY, (key_id,)).fetchone() is not None
    conn.commit()
    return revoked
