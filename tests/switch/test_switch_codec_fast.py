"""The codec's fast path agrees with the checked path (pyiso8583 plus the dialect's checks).

The fast path may decline (None) whenever it likes; when it answers, its answer must be the
checked path's, and it must never answer for something the checked path rejects.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_switch_codec_properties import field_values, mutate, mutations

from switch import codec
from switch.codec import CodecError, Message
from switch.dialects import get_dialect
from switch.dialects.base import Dialect

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
DIALECTS = [get_dialect("shetab87"), get_dialect("shetab93")]


def messages(dialect: Dialect) -> st.SearchStrategy[Message]:
    return st.builds(
        Message,
        mti=st.text(alphabet=string.digits, min_size=4, max_size=4),
        fields=st.fixed_dictionaries(
            {}, optional={spec.number: field_values(spec) for spec in dialect.fields}
        ),
    )


def checked_decode(raw: bytes, dialect: Dialect) -> Message | CodecError:
    try:
        return codec._decode_checked(raw, dialect)
    except CodecError as error:
        return error


def checked_encode(message: Message, dialect: Dialect) -> bytes | CodecError:
    try:
        return codec._encode_checked(message, dialect)
    except CodecError as error:
        return error


def agree_on_decode(raw: bytes, dialect: Dialect) -> bool:
    """True when the fast path answered (and agreed); asserts agreement."""
    fast = codec._decode_fast(raw, codec._table_of(dialect))
    reference = checked_decode(raw, dialect)
    if fast is None:
        return False
    assert isinstance(reference, Message), f"fast path accepted what pyiso8583 rejects: {reference}"
    assert fast.mti == reference.mti
    assert list(fast.fields.items()) == list(reference.fields.items())
    return True


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.name)
def test_valid_messages_take_the_fast_path_and_agree(dialect: Dialect) -> None:
    @SETTINGS
    @given(messages(dialect))
    def check(message: Message) -> None:
        fast = codec._encode_fast(message, codec._table_of(dialect))
        assert fast is not None, "a valid message should not need the checked path"
        assert fast == codec._encode_checked(message, dialect)
        assert agree_on_decode(fast, dialect)

    check()


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.name)
def test_mutated_messages_agree_or_fall_back(dialect: Dialect) -> None:
    @SETTINGS
    @given(messages(dialect), mutations)
    def check(message: Message, steps: list[tuple[str, int, int]]) -> None:
        raw = mutate(codec._encode_checked(message, dialect), steps)
        agree_on_decode(raw, dialect)
        # and the public decode gives exactly what the reference gives, error or message
        reference = checked_decode(raw, dialect)
        try:
            public: Message | CodecError = codec.decode(raw, dialect)
        except CodecError as error:
            public = error
        if isinstance(reference, CodecError):
            assert isinstance(public, CodecError)
            assert (public.reason, public.field, public.pos) == (
                reference.reason,
                reference.field,
                reference.pos,
            )
        else:
            assert public == reference

    check()


loose_values = st.text(
    alphabet=string.printable + "é\x00٣", max_size=30
)  # wrong lengths, wrong characters, non-ASCII digits


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.name)
def test_invalid_fields_never_take_the_fast_encode(dialect: Dialect) -> None:
    numbers = st.sampled_from([spec.number for spec in dialect.fields] + [1, 65, 129, 0])

    @SETTINGS
    @given(
        st.text(alphabet=string.digits + "a٣", min_size=3, max_size=5),
        st.dictionaries(numbers, loose_values, max_size=6),
    )
    def check(mti: str, fields: dict[int, str]) -> None:
        message = Message(mti, fields)
        fast = codec._encode_fast(message, codec._table_of(dialect))
        reference = checked_encode(message, dialect)
        if fast is not None:
            assert fast == reference
        try:
            public: bytes | CodecError = codec.encode(message, dialect)
        except CodecError as error:
            public = error
        if isinstance(reference, CodecError):
            assert isinstance(public, CodecError)
            assert (public.reason, public.field) == (reference.reason, reference.field)
        else:
            assert public == reference

    check()


def test_the_fast_path_declines_what_it_does_not_know() -> None:
    dialect = DIALECTS[0]
    table = codec._table_of(dialect)
    fields = {11: "000001", 41: "HNR00004", 42: "HNR000000000004"}
    good = codec._encode_checked(Message("0800", fields), dialect)
    assert codec._decode_fast(good, table) is not None
    assert b"C" in good[4:20]  # 41 and 42: a letter in the bitmap
    assert codec._decode_fast(good[:4] + good[4:20].lower() + good[20:], table) is None
    assert codec._decode_fast(good + b"X", table) is None  # trailing bytes
    assert codec._decode_fast(good[:-1], table) is None  # cut short
    assert codec._encode_fast(Message("0800", {11: "00001"}), table) is None  # short fixed field
    assert codec._encode_fast(Message("0800", {11: "٠٠٠٠٠١"}), table) is None  # Arabic digits
