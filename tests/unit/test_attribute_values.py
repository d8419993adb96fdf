from decimal import Decimal, Inexact

import pytest
from boto3.dynamodb.types import Binary, TypeDeserializer, TypeSerializer

from pneumoscan import attribute_values

# Everything a result or counter item holds, and the rest of DynamoDB's types.
VALUES = [
    None, True, False, 0, -7, 2**63, Decimal("0.123456"), Decimal("1E+3"), Decimal("-1.50"), "", "incoming/王.png",
    b"", b"\x00\xff heat", bytearray(b"grid"), {"a", "b"}, {Decimal("1.5"), 2}, {b"x", b"y"},
    [], [1, "two", None, [Decimal("3.25")]], (4, "five"), {},
    {"cam": {"heat_peak": Decimal("0.87"), "levels": 16}, "warnings": ["blank_image"], "previous": {"status": "SCORED"}},
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_values_serialize_as_boto3_serializes_them(value):
    ours, boto3s = attribute_values.serialize(value), TypeSerializer().serialize(value)
    assert _sets_sorted(ours) == _sets_sorted(boto3s)


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_attribute_values_read_back_as_boto3_reads_them_with_binary_as_bytes(value):
    attribute = TypeSerializer().serialize(value)
    assert attribute_values.deserialize(attribute) == _unwrap(TypeDeserializer().deserialize(attribute))


@pytest.mark.parametrize("value, error", [
    (0.5, TypeError), (Decimal("NaN"), TypeError), (Decimal("Infinity"), TypeError),
    ({1, "a"}, TypeError), (object(), TypeError), (Decimal("1." + "1" * 40), Inexact),
])
def test_what_dynamodb_cannot_hold_is_refused_as_boto3_refuses_it(value, error):
    with pytest.raises(error):
        TypeSerializer().serialize(value)
    with pytest.raises(error):
        attribute_values.serialize(value)


def _sets_sorted(attribute):
    """Set members come out in set order: compare them sorted."""
    [(kind, value)] = attribute.items()
    if kind in ("SS", "NS", "BS"):
        return {kind: sorted(value)}
    if kind == "M":
        return {kind: {key: _sets_sorted(member) for key, member in value.items()}}
    if kind == "L":
        return {kind: [_sets_sorted(member) for member in value]}
    return attribute


def _unwrap(value):
    if isinstance(value, Binary):
        return value.value
    if isinstance(value, dict):
        return {key: _unwrap(member) for key, member in value.items()}
    if isinstance(value, list):
        return [_unwrap(member) for member in value]
    if isinstance(value, set):
        return {_unwrap(member) for member in value}
    return value
