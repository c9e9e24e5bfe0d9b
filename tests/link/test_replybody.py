"""A reply body is bounded after decoding: compression cannot get a bomb past the limit."""

from __future__ import annotations

import gzip
import zlib

import pytest

from agent.link.replybody import BadEncoding, BoundedBody, ReplyTooLarge

LIMIT = 1024 * 1024


def _read(encoding: str | None, raw: bytes, chunk: int = 4096) -> bytes:
    body = BoundedBody(encoding, LIMIT)
    for i in range(0, len(raw), chunk):
        body.feed(raw[i : i + chunk])
    return body.finish()


@pytest.mark.parametrize("encoding", [None, "", "identity", " Identity "])
def test_an_identity_body_comes_back_as_sent(encoding: str | None) -> None:
    assert _read(encoding, b'{"a": 1}') == b'{"a": 1}'


def test_gzip_and_both_kinds_of_deflate_are_inflated() -> None:
    text = b'{"revision": 3}' * 100
    raw_deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    assert _read("gzip", gzip.compress(text)) == text
    assert _read("x-gzip", gzip.compress(text), chunk=7) == text
    assert _read("deflate", zlib.compress(text)) == text
    assert _read("deflate", raw_deflate.compress(text) + raw_deflate.flush()) == text


def test_a_body_over_the_limit_is_refused_whether_plain_or_compressed() -> None:
    with pytest.raises(ReplyTooLarge, match="too large"):
        _read(None, b" " * (LIMIT + 1))
    assert len(_read(None, b" " * LIMIT)) == LIMIT
    # 64 MiB of zeros, 64 KiB of gzip, fed as one chunk: refused without inflating it all.
    bomb = gzip.compress(bytes(64 << 20), 9)
    body = BoundedBody("gzip", LIMIT)
    with pytest.raises(ReplyTooLarge):
        body.feed(bomb)


@pytest.mark.parametrize("encoding", ["gzip, gzip", "gzip,deflate", "deflate, identity, gzip"])
def test_stacked_encodings_are_refused_before_reading(encoding: str) -> None:
    with pytest.raises(BadEncoding, match="stacked"):
        BoundedBody(encoding, LIMIT)


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress"])
def test_unknown_encodings_are_refused(encoding: str) -> None:
    with pytest.raises(BadEncoding, match="not supported"):
        BoundedBody(encoding, LIMIT)


def test_a_body_that_does_not_decode_says_so() -> None:
    with pytest.raises(BadEncoding, match="does not decode"):
        _read("gzip", b"this is not gzip at all")
