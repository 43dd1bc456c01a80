"""The ixk_ token format: generated tokens parse, and nothing else does."""

from __future__ import annotations

import hashlib
import re
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.core.tokens import (
    BASE62,
    TOKEN_LENGTH,
    checksum,
    digest,
    display_prefix,
    generate_token,
    parse_token,
)


def test_generated_tokens_have_the_documented_shape():
    token = generate_token()
    assert re.fullmatch(r"ixk_[0-9A-Za-z]{32}[0-9A-Za-z]{6}", token)
    assert len(token) == TOKEN_LENGTH == 42
    random_part, check = token[4:36], token[36:]
    number = 0
    for char in check:
        number = number * 62 + BASE62.index(char)
    assert number == zlib.crc32(random_part.encode())
    assert parse_token(token) == hashlib.sha256(token.encode()).digest() == digest(token)
    assert display_prefix(token) == token[:12]


def test_tokens_are_random():
    assert len({generate_token() for _ in range(1000)}) == 1000


@pytest.mark.parametrize("position", range(4, 42))
def test_any_single_character_change_is_caught_offline(position):
    token = generate_token()
    replacement = "a" if token[position] != "a" else "b"
    changed = token[:position] + replacement + token[position + 1 :]
    assert parse_token(changed) is None


@given(st.text(max_size=60))
def test_parse_never_raises_and_accepts_only_valid_tokens(candidate):
    result = parse_token(candidate)
    if result is not None:
        assert candidate.startswith("ixk_") and len(candidate) == 42
        assert checksum(candidate[4:36]) == candidate[36:]


@given(st.binary(max_size=60))
def test_surrogate_escaped_header_bytes_never_raise(raw):
    # aiohttp decodes header values with surrogateescape.
    assert parse_token("ixk_" + raw.decode("utf-8", "surrogateescape")) is None
