"""Error groups: failures whose messages differ only in their particulars share one fingerprint.

`normalize` replaces the variable parts of an error message with placeholders, by the rules below in
this fixed order (an earlier rule's placeholder is never rewritten by a later one); the fingerprint is
a hash of the rules' version, the error type and the normalised message. It is computed once, when an
event is stored (transfer), so a query never re-derives it and changing the rules can never silently
regroup stored failures: new rules get a new `RULES_VERSION`, and groups of different versions stay
apart (docs/design.md §3).
"""

from __future__ import annotations

import hashlib
import re

RULES_VERSION = 1

# (placeholder, pattern), applied in this order. URLs before paths (a URL holds a path), quoted values
# before what they may contain, UUIDs and hex ids before plain numbers, durations before numbers.
RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("<url>", re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>]+", re.IGNORECASE)),
    ("<quoted>", re.compile(r"'[^'\n]*'|\"[^\"\n]*\"|`[^`\n]*`")),
    ("<uuid>", re.compile(r"\b[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}\b", re.IGNORECASE)),
    ("<hex>", re.compile(r"\b0x[0-9a-f]+\b|\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{8,}\b", re.IGNORECASE)),
    ("<path>", re.compile(r"(?:\b[a-z]:)?(?:[\\/][\w.@%+~-]+){2,}[\\/]?", re.IGNORECASE)),
    (
        "<duration>",
        re.compile(
            r"(?<![\w.])\d+(?:\.\d+)?\s?(?:ns|us|µs|ms|s|sec|secs|seconds?|m|min|mins|minutes?|h|hrs?|hours?)\b",
            re.IGNORECASE,
        ),
    ),
    ("<n>", re.compile(r"(?<![\w.])[-+]?\d+(?:[.,]\d+)*(?:e[-+]?\d+)?(?![\w])", re.IGNORECASE)),
)
_SPACES = re.compile(r"\s+")
# Longest message part that is normalised: the rest cannot change the group (and bounds the work).
MAX_NORMALISED_CHARS = 1024


def normalize(message: str) -> str:
    """The message with its particulars replaced by placeholders and runs of white space made one space."""
    text = message[:MAX_NORMALISED_CHARS]
    for placeholder, pattern in RULES:
        text = pattern.sub(placeholder, text)
    return _SPACES.sub(" ", text).strip()


def fingerprint(error_type: str, message: str) -> str:
    """The group of a failure: 16 hex digits of SHA-256 over the rules' version, type and normalised text."""
    digest = hashlib.sha256(f"{RULES_VERSION}\x1f{error_type}\x1f{normalize(message)}".encode())
    return digest.hexdigest()[:16]
