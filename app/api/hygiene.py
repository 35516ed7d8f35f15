"""Input hygiene, once for every façade: what a request may carry before anything is stored.

Refused, whatever the transport: a NUL byte or a lone surrogate in any string (PostgreSQL text and
JSON clients cannot hold them), an integer outside int64 in free-form JSON (none of our clients can
read it back), a non-finite number, and JSON nested deeper than `input.max_json_depth`. Each check
raises BadInput; the caller (app.api.edge, or a façade) answers it in its own wire format. Database
errors that can only come from a bad value (DataError, a NOT NULL or CHECK violation) become domain
errors in app.db (`input_errors` here is its `errors_as_domain`), so every façade maps them to its
invalid-argument code like any other.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from app.db import domain_error_of  # noqa: F401 - re-exported: tests and older callers import it from here
from app.db import errors_as_domain as input_errors  # noqa: F401 - re-exported
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
