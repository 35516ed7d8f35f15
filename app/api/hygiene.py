"""Input hygiene, once for every façade: what a request may carry before anything is stored.

Refused, whatever the transport: a NUL byte or a lone surrogate in any string (PostgreSQL text and
JSON clients cannot hold them), an integer outside int64 in free-form JSON (none of our clients can
read it back), a non-finite number, and JSON nested deeper than `input.max_json_depth`. Each check
raises BadInput; the caller (app.api.edge, or a façade) answers it in its own wire format. Database
errors that can only come from a bad value (DataError, a NOT NULL or CHECK violation) become domain
errors here, so every façade maps them to its invalid-argument code like any other.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from sqlalchemy.exc import DataError, IntegrityError, StatementError

from app.domain.errors import Aborted, AlreadyExists, DomainError, InvalidArgument
from config.settings import get_settings

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


class BadInput(ValueError):
    """A value no façade accepts; `message` names the field and says what is allowed."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def text_problem(value: str) -> str | None:
    """Why `value` cannot be stored or sent back, or None when it is fine."""
    if "\x00" in value:
        return "contains a NUL byte (\\u0000), which cannot be stored"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode: it holds a lone surrogate (e.g. \\ud800 without its pair)"
    return None


def check_text(value: str, field: str) -> str:
    problem = text_problem(value)
    if problem:
        raise BadInput(f"{field} {problem}")
    return value


def check_int(value: int, field: str, bounds: tuple[int, int] = INT64) -> int:
    if not bounds[0] <= value <= bounds[1]:
        raise BadInput(f"{field} is out of range: {value} is not between {bounds[0]} and {bounds[1]}")
    return value


def parse_int(raw: str, field: str, bounds: tuple[int, int] = INT64) -> int:
    """A decimal integer from a query or path parameter, within `bounds`."""
    try:
        value = int(raw.strip())
    except ValueError:
        raise BadInput(f"{field} must be an integer, got {raw[:40]!r}") from None
    return check_int(value, field, bounds)


def max_depth() -> int:
    return get_settings().input.max_json_depth


def check_json(value: Any, field: str = "body", *, depth_limit: int | None = None, scalars: bool = True) -> Any:
    """Walk decoded JSON (iteratively: depth is bounded by us, not by the interpreter's stack).
    `scalars=False` checks the nesting only (see `loads`, which knows when the scalars are fine)."""
    limit = depth_limit or max_depth()
    stack: list[tuple[Any, str, int]] = [(value, field, 1)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            check_text(item, path)
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            check_int(item, path)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise BadInput(f"{path} must be a finite number, got {item}")
        elif isinstance(item, (dict, list)):
            if depth > limit:
                raise BadInput(f"{path} is nested too deeply: JSON may nest at most {limit} levels")
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in pairs:
                if not scalars and not isinstance(child, (dict, list)):
                    continue
                if isinstance(key, str):
                    check_text(key, f"a key of {path}")
                    stack.append((child, f"{path}.{key}", depth + 1))
                else:
                    stack.append((child, f"{path}[{key}]", depth + 1))
    return value


# In JSON text a NUL or a lone surrogate can only arrive as an escape (raw ones are not valid JSON, or
# not UTF-8). A body without such an escape needs its strings walked for nothing: numbers are checked
# while parsing, so a megabyte costs a walk over its containers only, not over every value.
_ODD_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")


def _json_int(field: str) -> Any:
    def parse(text: str) -> int:
        try:
            return check_int(int(text), f"an integer in {field}")
        except ValueError:  # more digits than int() takes
            raise BadInput(f"an integer in {field} is out of range: {text[:24]}... has {len(text)} digits") from None
    return parse


def _json_float(field: str) -> Any:
    def parse(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise BadInput(f"a number in {field} must be finite, got {text[:40]}")
        return value
    return parse


def _json_constant(field: str) -> Any:
    def parse(name: str) -> float:
        raise BadInput(f"a number in {field} must be finite, got {name}")
    return parse


def loads(body: bytes | str, field: str = "body") -> Any:
    """json.loads plus check_json. Malformed JSON still raises json.JSONDecodeError (or
    UnicodeDecodeError), for the façade to answer in its own words; too deep raises BadInput."""
    try:
        data = json.loads(body, parse_int=_json_int(field), parse_float=_json_float(field),
                          parse_constant=_json_constant(field))
    except RecursionError:
        raise BadInput(f"{field} is nested too deeply: JSON may nest at most {max_depth()} levels") from None
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    return check_json(data, field, scalars=_ODD_ESCAPE.search(raw) is not None)


def check_message(msg: Any, field: str = "", *, depth_limit: int | None = None) -> Any:
    """Every string in a decoded protobuf message (nested messages, repeated fields and maps too).
    Protobuf itself refuses invalid UTF-8 and out-of-range integers; NUL bytes it lets through."""
    limit = depth_limit or max_depth()
    stack: list[tuple[Any, str, int]] = [(msg, field, 1)]
    while stack:
        current, path, depth = stack.pop()
        if depth > limit:
            raise BadInput(f"{path or 'the request'} is nested too deeply: at most {limit} levels")
        for fd, value in current.ListFields():
            name = f"{path}.{fd.name}" if path else fd.name
            if fd.type == FieldDescriptor.TYPE_MESSAGE and fd.message_type.GetOptions().map_entry:
                value_fd = fd.message_type.fields_by_name["value"]
                for key, item in value.items():
                    if isinstance(key, str):
                        check_text(key, f"a key of {name}")
                    _push(stack, value_fd, item, f"{name}[{key!r}]", depth)
            elif fd.is_repeated:
                for n, item in enumerate(value):
                    _push(stack, fd, item, f"{name}[{n}]", depth)
            else:
                _push(stack, fd, value, name, depth)
    return msg


def _push(stack: list[tuple[Any, str, int]], fd: Any, value: Any, name: str, depth: int) -> None:
    if fd.type == FieldDescriptor.TYPE_STRING:
        check_text(value, name)
    elif fd.type == FieldDescriptor.TYPE_MESSAGE:
        stack.append((value, name, depth + 1))


# ---- database errors that mean "bad input" ------------------------------------------------------

# PostgreSQL SQLSTATEs / SQLite message prefixes of integrity errors that only a bad value causes.
_BAD_VALUE_STATES = {"23502": "a required value is missing", "23514": "a value breaks a rule of its field",
                     "23503": "a value refers to an object that does not exist"}
# The unique partial index that allows one active lease per instance (migration 0002_lease_invariant).
ACTIVE_LEASE_INDEX = "uq_leases_active_instance"
_SQLITE_BAD_VALUE = {"NOT NULL": "a required value is missing", "CHECK": "a value breaks a rule of its field",
                     "FOREIGN KEY": "a value refers to an object that does not exist"}


def domain_error_of(exc: BaseException) -> DomainError | None:
    """The domain error a database failure stands for when the request's values caused it, else None."""
    orig = getattr(exc, "orig", None)
    lines = str(orig if orig is not None else exc).splitlines()
    reason = lines[0] if lines else type(exc).__name__
    if getattr(orig, "sqlstate", None) in ("40P01", "40001"):
        # The database aborted the transaction to resolve a conflict (deadlock, serialization) and our
        # retries ran out: a lost race the caller may retry, like any compare-and-set that lost.
        return Aborted("the request conflicted with a concurrent one; retry the call")
    if isinstance(exc, DataError):
        return InvalidArgument(f"a value in the request cannot be stored: {reason}")
    if isinstance(exc, IntegrityError):
        state = getattr(orig, "sqlstate", None)
        constraint = getattr(getattr(orig, "diag", None), "constraint_name", None) or ""
        if constraint == ACTIVE_LEASE_INDEX or "UNIQUE constraint failed: leases.instance_id" in reason:
            # The database's backstop against a second active lease: a lost race, not a bad value.
            return Aborted("the instance was leased concurrently; retry the call")
        if state == "23505" or "UNIQUE constraint failed" in reason:
            return AlreadyExists(f"an object with these values already exists ({reason})")
        what = _BAD_VALUE_STATES.get(state or "") or next(
            (v for k, v in _SQLITE_BAD_VALUE.items() if f"{k} constraint failed" in reason), None)
        return InvalidArgument(f"{what}: {reason}") if what else None
    if isinstance(exc, StatementError) and isinstance(orig, (UnicodeError, ValueError)):
        return InvalidArgument(f"a value in the request cannot be stored: {reason}")
    return None


@contextmanager
def input_errors() -> Iterator[None]:
    """Around a unit of work: database errors caused by the request's values become domain errors."""
    try:
        yield
    except (DataError, IntegrityError, StatementError) as exc:
        mapped = domain_error_of(exc)
        if mapped is None:
            raise
        raise mapped from None
