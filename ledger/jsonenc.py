"""Reusable JSON encoders for the per-request hot path (log lines, stored responses, events).

``json.JSONEncoder.encode`` builds a new C encoder object on every call, which for the small
objects the switch writes per request is about a third of the call (a log line's entry: 3.2
against 2.0 µs, measured with ``timeit``-style loops; docs/benchmarks.md, run 6, has what it
saved per purchase). An
encoder from :func:`json_encoder` builds the standard library's C encoder once and reuses it.
Its output is byte for byte that of ``json.JSONEncoder`` with the same options: this is
checked once when the encoder is made, and where the C encoder is missing or its signature
differs (another Python), the plain ``JSONEncoder.encode`` is used instead.

The reused encoder does not check for circular references: give it trees (dicts, lists,
strings, numbers), as every caller here does.
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Callable
from typing import Any

# The standard library's C encoder factory (None where ``_json`` is missing).
_c_make_encoder: Callable[..., Any] | None = getattr(json.encoder, "c_make_encoder", None)

# A tree that exercises what the encoders are given: ordering, non-ASCII text, escapes,
# numbers (big ints, floats), None, booleans and nesting.
_SAMPLE: dict[str, Any] = {
    "b": 'گالری "هنر"\n\t\u2028',
    "a": [1, -2.5, 1e300, 0.1, None, True, False, {"z": {}, "y": []}],
    "d": 12345678901234567890,
}


def json_encoder(
    *,
    sort_keys: bool = False,
    ensure_ascii: bool = True,
    default: Callable[[Any], Any] | None = None,
) -> Callable[[Any], str]:
    """A function that encodes like ``json.JSONEncoder(sort_keys=..., ensure_ascii=...,
    default=...).encode``, compact separators excepted (the defaults ``", "`` and ``": "``)."""
    plain = json.JSONEncoder(sort_keys=sort_keys, ensure_ascii=ensure_ascii, default=default)
    make = _c_make_encoder
    if make is None:
        return plain.encode
    on_unknown = plain.default if default is None else default
    strings = (
        json.encoder.encode_basestring_ascii if ensure_ascii else json.encoder.encode_basestring
    )
    try:
        encoder = make(None, on_unknown, strings, None, ": ", ", ", sort_keys, False, True)
    except TypeError:  # a C encoder with another signature
        return plain.encode

    def encode(value: Any) -> str:
        return "".join(encoder(value, 0))

    # and, for the default hook, a value only it can encode
    samples = [_SAMPLE, {**_SAMPLE, "c": b"raw"}] if default else [_SAMPLE]
    try:
        same = all(encode(sample) == plain.encode(sample) for sample in samples)
    except Exception:  # anything unexpected from the C encoder: do not use it
        return plain.encode
    return encode if same else plain.encode
