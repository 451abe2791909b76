"""Error-group fingerprints: messages that differ only in their particulars share a group, others don't."""

from __future__ import annotations

import string
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from generation_analytics.service import fingerprints
from generation_analytics.service.fingerprints import fingerprint, normalize

# Values a message may carry that must not split a group, one strategy per rule.
PARTICULARS = {
    "<url>": st.builds(
        lambda host, path, q: f"https://{host}.example.com/{path}?id={q}",
        st.text(string.ascii_lowercase, min_size=1, max_size=8),
        st.text(string.ascii_lowercase + "/", min_size=1, max_size=12),
        st.integers(0, 10**9),
    ),
    "<quoted>": st.builds(lambda s: f"'{s}'", st.text(string.ascii_letters + string.digits + " /:", max_size=20)),
    "<uuid>": st.builds(lambda: str(uuid.uuid4())),
    "<hex>": st.builds(lambda n: f"0x{n:x}", st.integers(0, 2**64)),
    "<path>": st.builds(
        lambda parts: "/" + "/".join(parts),
        st.lists(
            st.text(string.ascii_lowercase + string.digits + "._-", min_size=1, max_size=8), min_size=2, max_size=5
        ),
    ),
    "<duration>": st.builds(lambda n, unit: f"{n}{unit}", st.integers(0, 10**6), st.sampled_from(["ms", "s", " min"])),
    "<n>": st.builds(str, st.integers(-(10**12), 10**12)),
}
# Message templates from real failures; {} are the particulars.
TEMPLATES = [
    ("CUDAOutOfMemory", "CUDA out of memory. Tried to allocate {<n>} MiB on device {<n>}"),
    ("Timeout", "Timeout after {<duration>} waiting for worker {<n>}"),
    ("UpstreamError", "request {<uuid>} failed calling {<url>}"),
    ("FileNotFound", "weights not found: {<path>}"),
    ("ValueError", "invalid value {<quoted>} for parameter {<quoted>}"),
    ("ChecksumError", "checksum {<hex>} does not match"),
]


def _fill(template: str, draw: st.DrawFn) -> str:
    out = template
    for placeholder, strategy in PARTICULARS.items():
        while "{" + placeholder + "}" in out:
            out = out.replace("{" + placeholder + "}", draw(strategy), 1)
    return out


@st.composite
def same_failure_twice(draw: st.DrawFn) -> tuple[str, str, str]:
    error_type, template = draw(st.sampled_from(TEMPLATES))
    return error_type, _fill(template, draw), _fill(template, draw)


@given(same_failure_twice())
def test_messages_differing_only_in_particulars_share_a_fingerprint(case: tuple[str, str, str]) -> None:
    error_type, first, second = case
    assert normalize(first) == normalize(second), (first, second)
    assert fingerprint(error_type, first) == fingerprint(error_type, second)


@given(same_failure_twice(), same_failure_twice())
def test_different_failures_get_different_fingerprints(a: tuple[str, str, str], b: tuple[str, str, str]) -> None:
    (type_a, message_a, _), (type_b, message_b, _) = a, b
    if type_a != type_b:
        assert fingerprint(type_a, message_a) != fingerprint(type_b, message_b)
        # the type alone splits groups, even for the very same message
        assert fingerprint(type_a, message_a) != fingerprint(type_b, message_a)


@pytest.mark.parametrize(
    ("message", "normalised"),
    [
        ("Tried to allocate 2.50 GiB (GPU 0; 23.65 GiB total)", "Tried to allocate <n> GiB (GPU <n>; <n> GiB total)"),
        ("Timeout after 30s  waiting\tfor worker 12", "Timeout after <duration> waiting for worker <n>"),
        ("GET https://a.example/x/y?z=1 failed: 'bad token'", "GET <url> failed: <quoted>"),
        ("id 3F2B9C1E-1111-4222-8333-444455556666 at /var/lib/m/unet.bin", "id <uuid> at <path>"),
        ("hash deadbeef12 != 0x1f", "hash <hex> != <hex>"),
        ("NaN at step 1,234; loss=1.5e-3", "NaN at step <n>; loss=<n>"),
        ("no particulars here", "no particulars here"),
        ("", ""),
    ],
)
def test_the_documented_rules(message: str, normalised: str) -> None:
    assert normalize(message) == normalised


def test_the_rules_version_is_part_of_the_fingerprint(monkeypatch: pytest.MonkeyPatch) -> None:
    before = fingerprint("Timeout", "Timeout after 30s")
    monkeypatch.setattr(fingerprints, "RULES_VERSION", fingerprints.RULES_VERSION + 1)
    assert fingerprint("Timeout", "Timeout after 30s") != before


def test_only_the_first_part_of_a_huge_message_counts() -> None:
    head = "x" * fingerprints.MAX_NORMALISED_CHARS
    assert fingerprint("E", head + "a") == fingerprint("E", head + "b" * 1_000_000)


@pytest.mark.parametrize("unit", ["/a", "1.", "1,", "'", "0x", "a:/", "1e", "-1 ", "9 ms"])
def test_repetitive_input_is_normalised_whole(unit: str) -> None:
    """Inputs built to make regexes backtrack (each rule is linear: no nested ambiguous repeats)."""
    text = unit * 2000
    assert normalize(text) == normalize(text[: fingerprints.MAX_NORMALISED_CHARS])
    assert len(fingerprint("E", text)) == 16
