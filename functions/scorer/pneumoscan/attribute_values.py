"""Plain Python values <-> the typed attribute values of DynamoDB's low-level API.

The rules are boto3.dynamodb.types' (numbers as Decimal within DynamoDB's 38 digits,
floats refused, sets typed by their members), without its import: importing any part of
boto3 imports boto3 itself, s3transfer, multiprocessing and concurrent.futures, at every
cold start of a function whose clients are botocore's.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from decimal import Clamped, Context, Decimal, Inexact, Overflow, Rounded, Underflow
from typing import Any

# What a DynamoDB number holds: a value it would round or clamp raises instead.
NUMBER_CONTEXT = Context(Emin=-128, Emax=126, prec=38, traps=[Clamped, Overflow, Inexact, Rounded, Underflow])


def serialize(value: Any) -> dict:
    """One Python value as an attribute value: {"S": ...}, {"N": ...}, {"M": {...}}, ..."""
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):  # before the numbers: bool is an int
        return {"BOOL": value}
    if isinstance(value, (int, Decimal)):
        return {"N": _number(value)}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, (bytes, bytearray)):
        return {"B": bytes(value)}
    if isinstance(value, Set):
        return _set(value)
    if isinstance(value, Mapping):
        return {"M": {key: serialize(member) for key, member in value.items()}}
    if isinstance(value, (list, tuple)):
        return {"L": [serialize(member) for member in value]}
    raise TypeError(f"{type(value).__name__} is not a DynamoDB type (floats go in as Decimal)")


def deserialize(attribute: Mapping[str, Any]) -> Any:
    """One attribute value as plain Python: numbers as Decimal, binary as bytes."""
    [(kind, value)] = attribute.items()
    if kind in ("S", "BOOL", "B"):
        return value
    if kind == "N":
        return NUMBER_CONTEXT.create_decimal(value)
    if kind == "NULL":
        return None
    if kind == "M":
        return {key: deserialize(member) for key, member in value.items()}
    if kind == "L":
        return [deserialize(member) for member in value]
    if kind == "NS":
        return {NUMBER_CONTEXT.create_decimal(member) for member in value}
    if kind in ("SS", "BS"):
        return set(value)
    raise TypeError(f"{kind} is not a DynamoDB attribute type")


def _number(value: int | Decimal) -> str:
    if isinstance(value, Decimal) and not value.is_finite():
        raise TypeError(f"{value} is not a DynamoDB number")
    return str(NUMBER_CONTEXT.create_decimal(value))


def _set(members: Set) -> dict:
    if all(isinstance(member, str) for member in members):
        return {"SS": list(members)}
    if all(isinstance(member, (bytes, bytearray)) for member in members):
        return {"BS": [bytes(member) for member in members]}
    if all(isinstance(member, (int, Decimal)) and not isinstance(member, bool) for member in members):
        return {"NS": [_number(member) for member in members]}
    raise TypeError("a DynamoDB set holds only strings, only numbers or only binary values")
