"""Incremental JSON-object framing, as lightningd reads its plugins and its RPC socket.

lightningd does not need a separator: it parses a stream of concatenated JSON objects
(pyln-client ends each with "\\n\\n", pyln's `LightningRpc` sends none). This splitter feeds bytes
in and yields whole objects; a buffer that cannot become valid JSON is a protocol error.
"""

from __future__ import annotations

import codecs
import json
from typing import Any


class JsonStreamError(ValueError):
    """The byte stream is not a sequence of JSON objects."""


class JsonObjectSplitter:
    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._buf = ""
        self._decoder = json.JSONDecoder()

    @property
    def pending(self) -> str:
        return self._buf

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        try:
            self._buf += self._utf8.decode(data)
        except UnicodeDecodeError as e:
            raise JsonStreamError(f"invalid UTF-8: {e}") from e
        out: list[dict[str, Any]] = []
        while True:
            stripped = self._buf.lstrip()
            if not stripped:
                self._buf = ""
                return out
            if stripped[0] != "{":
                raise JsonStreamError(f"JSON-RPC message is not a JSON object: {stripped[:200]!r}")
            try:
                obj, end = self._decoder.raw_decode(stripped)
            except json.JSONDecodeError as e:
                # Incomplete, or garbage? A complete message is followed by a blank line (pyln
                # always writes one; json.dumps never produces one inside an object).
                if "\n\n" in stripped[e.pos :]:
                    raise JsonStreamError(
                        f"malformed JSON ({e.msg} at {e.pos}): {stripped[:300]!r}"
                    ) from e
                self._buf = stripped
                return out
            out.append(obj)
            self._buf = stripped[end:]

    def close(self) -> None:
        """At EOF: anything left over was an incomplete object."""
        rest = self._buf.strip()
        if rest:
            raise JsonStreamError(f"stream ended inside a JSON object: {rest[:300]!r}")
