"""A controller reply's body, read within a size limit that compression cannot get around.

The controller client asks for ``Accept-Encoding: identity`` and reads the raw bytes off the
wire, so no HTTP library inflates a body before its size is known. A server (or a proxy)
may compress anyway: one `gzip` or `deflate` layer is inflated here, in bounded steps, and
the reply is refused the moment the inflated text passes the limit, so a few KB of gzip
cannot become gigabytes in memory. Stacked encodings (``gzip, gzip``: the trick of a
compression bomb) and ones we do not speak (``br``, ``zstd``) are refused outright. Pure: no
sockets and no httpx; `agent.link.controller` feeds the chunks and turns `ReplyTooLarge` and
`BadEncoding` into its `controller_unreachable` errors.
"""

from __future__ import annotations

import zlib

__all__ = ["BadEncoding", "BoundedBody", "ReplyTooLarge"]

_GZIP_WBITS = 16 + zlib.MAX_WBITS
_ZLIB_WBITS = zlib.MAX_WBITS
_STEP = 64 * 1024  # inflate at most this much per call, so one chunk cannot explode


class ReplyTooLarge(ValueError):
    """The body (inflated, if it was compressed) passed the limit."""


class BadEncoding(ValueError):
    """A ``Content-Encoding`` we refuse (stacked, unknown) or a body that does not decode."""


class BoundedBody:
    """Collects one reply body of at most `limit` bytes after decoding `content_encoding`.

    `feed(chunk)` for each raw chunk, then `finish()` for the body. Either raises
    `ReplyTooLarge` or `BadEncoding`; nothing beyond `limit` (plus one step) is ever held.
    """

    def __init__(self, content_encoding: str | None, limit: int) -> None:
        codings = [c.strip().lower() for c in (content_encoding or "").split(",")]
        codings = [c for c in codings if c and c != "identity"]
        if len(codings) > 1:
            raise BadEncoding(f"stacked content encodings refused: {', '.join(codings)}")
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self._inflater: zlib._Decompress | None = None
        self._coding = codings[0] if codings else None
        self._sniff = self._coding == "deflate"  # zlib-wrapped or raw: known at first byte
        if self._coding in ("gzip", "x-gzip"):
            self._inflater = zlib.decompressobj(_GZIP_WBITS)
        elif self._coding is not None and self._coding != "deflate":
            raise BadEncoding(f"content encoding {self._coding!r} is not supported")

    def feed(self, chunk: bytes) -> None:
        if self._sniff and chunk:
            # RFC 9110 means zlib-wrapped; some servers send raw deflate. A zlib stream's
            # first byte has 8 (deflate) in its low nibble.
            self._inflater = zlib.decompressobj(_ZLIB_WBITS if chunk[0] & 0x0F == 8 else -15)
            self._sniff = False
        if self._inflater is None:
            self._keep(chunk)
            return
        data = chunk
        while data or self._inflater.unconsumed_tail:
            data = data or self._inflater.unconsumed_tail
            try:
                out = self._inflater.decompress(data, _STEP)
            except zlib.error as e:
                raise BadEncoding(f"{self._coding} body does not decode: {e}") from None
            self._keep(out)
            data = b""
            if self._inflater.eof:
                break

    def finish(self) -> bytes:
        if self._inflater is not None and not self._sniff:
            try:
                self._keep(self._inflater.flush(_STEP))
            except zlib.error as e:
                raise BadEncoding(f"{self._coding} body does not decode: {e}") from None
        return b"".join(self._parts)

    def _keep(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._limit:
            raise ReplyTooLarge(f"reply too large: over {self._limit} bytes once decoded")
        if data:
            self._parts.append(data)
