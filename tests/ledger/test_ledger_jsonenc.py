"""ledger.jsonenc: the reused C encoder writes exactly what json.JSONEncoder writes."""

from __future__ import annotations

import json
import json.encoder
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import jsonenc
from ledger.jsonenc import json_encoder

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
trees = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)
OPTIONS = [
    {},
    {"sort_keys": True, "ensure_ascii": False},
    {"default": str, "ensure_ascii": False},
]


@pytest.mark.parametrize("options", OPTIONS, ids=["response", "event", "log"])
@settings(max_examples=200, deadline=None)
@given(value=trees)
def test_same_text_as_json_encoder(options: dict[str, Any], value: Any) -> None:
    encode = json_encoder(**options)
    assert encode.__qualname__ == "json_encoder.<locals>.encode"  # the reused C encoder
    assert encode(value) == json.JSONEncoder(**options).encode(value)


def test_the_default_hook_is_used() -> None:
    encode = json_encoder(default=str, ensure_ascii=False)
    assert encode({"b": b"\x01", "s": {1}}) == '{"b": "b\'\\\\x01\'", "s": "{1}"}'
    with pytest.raises(TypeError, match="not JSON serializable"):
        json_encoder()({"b": b"\x01"})


@pytest.mark.parametrize(
    "make",
    [
        None,  # no C encoder (another Python)
        lambda *args: (_ for _ in ()).throw(TypeError("other signature")),
        lambda *args: lambda value, level: ["{}"],  # one that writes something else
    ],
    ids=["missing", "other-signature", "different-output"],
)
def test_falls_back_to_json_encoder(monkeypatch: pytest.MonkeyPatch, make: Any) -> None:
    monkeypatch.setattr(jsonenc, "_c_make_encoder", make)
    encode = json_encoder(sort_keys=True)
    assert encode.__qualname__ == "JSONEncoder.encode"
    assert encode({"b": 1, "a": "é"}) == '{"a": "\\u00e9", "b": 1}'
