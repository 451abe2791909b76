"""Signed page tokens, shared by every paged answer (ListEvents, ListErrorGroups).

A token is base64url(JSON) "." base64url(MAC): HMAC-SHA256 with a secret the replicas share, so a token can
only be one this service issued. It names the RPC it was issued by, the question's fields other than the
paging ones (its filters and order, as a hash), `days`, the window of the first page (a later page keeps
it, so paging is stable while the hour turns) and the position to continue from, which each answer reads
back and range-checks itself (`PageTokens.read`'s `position`). Anything else is INVALID_ARGUMENT naming
`page_token`, never an internal error.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from psycopg import AsyncConnection

from generation_analytics.questions import Question
from generation_analytics.service.errors import InvalidArgument
from generation_analytics.service.hours import DAY, HOUR, hour_floor
from generation_analytics.service.queries.window import Window

MAX_TOKEN_CHARS = 512
MAX_BIGINT = 2**63 - 1
# Fields of a question that move through its pages rather than define them.
PAGING_FIELDS = frozenset({"days", "page_size", "page_token"})
# Payload keys the tokens themselves use; an answer's position takes any other.
_OWN_KEYS = frozenset({"v", "q", "d", "s", "f"})

T = TypeVar("T")


def bound_fields(question: Question) -> str:
    """What a page token is bound to: every field of the question but the paging ones."""
    bound = {f.name: getattr(question, f.name) for f in dataclasses.fields(question) if f.name not in PAGING_FIELDS}
    return hashlib.sha256(json.dumps(bound, sort_keys=True, default=str).encode()).hexdigest()[:16]


class PageTokens:
    """Issues and reads page tokens signed with the replicas' shared secret."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()[:16]

    def issue(self, window: Window, question: Question, position: dict[str, Any]) -> str:
        """A token continuing `question` (its filters, `days` and `window`) after `position` (JSON values)."""
        assert not _OWN_KEYS & position.keys(), position
        values = {
            "v": 2,
            "q": question.RPC,
            "d": window.days,
            "s": window.start.isoformat(),
            "f": bound_fields(question),
        }
        payload = json.dumps({**values, **position}, separators=(",", ":")).encode()
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def read(
        self, token: str, question: Question, days: int, position: Callable[[dict[str, Any], Window], T]
    ) -> tuple[Window, T]:
        """The window a token continues in and its position (read by `position`, which raises ValueError,
        KeyError or TypeError for one it refuses), or INVALID_ARGUMENT naming `page_token`."""
        payload = self._verified(token)
        try:
            values = json.loads(payload)
            # Tokens of ListEvents issued before tokens named their RPC carry no "q".
            if values.get("q", "ListEvents") != question.RPC:
                raise InvalidArgument("page_token", "issued by another RPC")
            if values["f"] != bound_fields(question) or values["d"] != days:
                raise InvalidArgument("page_token", "issued for different filters, order or days")
            start = datetime.fromisoformat(values["s"])
            window = Window(days=days, start=start, end=start + days * DAY + HOUR)
            if values["v"] != 2 or start.tzinfo is None or start != hour_floor(start) or window.end > _latest_end():
                raise ValueError("window")
            return window, position(values, window)
        except InvalidArgument:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError, OverflowError):
            raise InvalidArgument("page_token", "not valid") from None

    def _verified(self, token: str) -> bytes:
        body, _, mac = token.partition(".")
        try:
            if len(token) > MAX_TOKEN_CHARS:
                raise ValueError
            payload, signature = _unb64(body), _unb64(mac)
        except (ValueError, binascii.Error):
            raise InvalidArgument("page_token", "not valid") from None
        if not hmac.compare_digest(signature, self._mac(payload)):
            raise InvalidArgument("page_token", "not valid")
        return payload


def checked_int(value: Any, low: int, high: int = MAX_BIGINT) -> int:
    """A position's integer, or ValueError (JSON's true/false and floats are not integers here)."""
    if type(value) is not int or not low <= value <= high:
        raise ValueError("position")
    return value


# The secret every replica signs page tokens with: generated once, by whichever replica asks first.
ENSURE_SECRET = """
INSERT INTO service_secrets (name, value) VALUES ('page_tokens', %(value)s) ON CONFLICT (name) DO NOTHING
"""
SELECT_SECRET = "SELECT value FROM service_secrets WHERE name = 'page_tokens'"


async def shared_token_secret(conn: AsyncConnection[Any]) -> bytes:
    await conn.execute(ENSURE_SECRET, {"value": secrets.token_bytes(32)})
    row = await (await conn.execute(SELECT_SECRET)).fetchone()
    assert row is not None
    return bytes(row[0])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    """The bytes of exactly the text `_b64` writes (no other alphabet, padding or spelling of the bytes)."""
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(data) != text:
        raise ValueError("not canonical base64url")
    return data


def _latest_end() -> datetime:
    """No window a token names can end after the end of the next hour (clocks a little ahead)."""
    return hour_floor(datetime.now(UTC)) + 2 * HOUR
