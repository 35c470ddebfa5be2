"""A function called over HTTP, in the worker that runs it: JSON (or raw bytes) in, JSON (or raw
bytes) out, and errors as HTTP statuses.

The cluster server never reads a request body or a result (see :mod:`rh_core.server.http_door`): the
worker turns the body into arguments and the result into a response. Its outcome is always ``ok``
and holds the response's description as JSON (``{"status", "content_type"}``, or ``{"status",
"error": {"type", "message", "traceback"}}``), then the body.

* A JSON object is the keyword arguments, a JSON array the positional ones; an empty body takes the
  query string's parameters as keyword arguments (each read as JSON when it parses, else as text).
* ``Content-Type: application/octet-stream``: the body is the one positional argument, as ``bytes``.
* A result of ``bytes`` (``bytearray``, ``memoryview``) is sent as is, ``application/octet-stream``;
  any other result as JSON (numpy arrays included).
* Arguments that do not fit the function's signature, or a body that is not JSON: 400. An exception
  with an integer ``status_code`` between 400 and 599 (FastAPI's and Starlette's ``HTTPException``
  have one) sets the status, its ``detail`` the message; any other exception is a 500.
"""

from __future__ import annotations

import inspect
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from rh_core.plugin.interfaces import Outcome

OCTET_STREAM = "application/octet-stream"


class BadRequest(ValueError):
    """The request cannot be made into a call of the function (status 400)."""


def respond(fn: Callable, request: dict[str, Any], body_frames: Sequence[Any],
            call: Callable[[Callable, tuple, dict], Any]) -> Outcome:
    """Call ``fn`` (through ``call``) with the arguments of an HTTP request and describe the response."""
    body = bytes(body_frames[0]) if body_frames else b""
    try:
        args, kwargs = arguments(request, body)
        _check_signature(fn, args, kwargs)
    except BadRequest as exc:
        return error_response(exc, status=400)
    try:
        result = call(fn, args, kwargs)
    except BaseException as exc:
        return error_response(exc)
    if isinstance(result, (bytes, bytearray, memoryview)):
        return _response({"status": 200, "content_type": OCTET_STREAM}, result)
    try:
        encoded = orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
    except TypeError as exc:
        from rh_core.errors import SerializationError

        return error_response(SerializationError(
            f"the function returned a {type(result).__name__}, which cannot be sent as JSON ({exc}); return plain "
            "data (dicts, lists, strings, numbers) or bytes"))
    return _response({"status": 200, "content_type": "application/json"}, encoded)


def arguments(request: dict[str, Any], body: bytes) -> tuple[tuple, dict]:
    """The positional and keyword arguments a request stands for (see the module docstring)."""
    if request.get("content_type") == OCTET_STREAM:
        return (body,), {}
    if not body.strip():
        return (), {key: _query_value(value) for key, value in request.get("query", {}).items()}
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not JSON ({exc}); send a JSON object of keyword arguments or an "
                         f"array of positional ones, or raw bytes as {OCTET_STREAM}") from None
    if isinstance(parsed, dict):
        return (), parsed
    if isinstance(parsed, list):
        return tuple(parsed), {}
    raise BadRequest(f"the request body is a JSON {type(parsed).__name__}; send an object of keyword arguments or an "
                     "array of positional ones")


def _query_value(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def _check_signature(fn: Callable, args: tuple, kwargs: dict) -> None:
    """A 400 for arguments that do not fit, told apart from a TypeError raised inside the function."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: the call itself will tell
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise BadRequest(f"the arguments do not fit {getattr(fn, '__name__', 'the function')}{signature}: {exc}") from None


def error_response(exc: BaseException, status: int | None = None) -> Outcome:
    code = getattr(exc, "status_code", None)
    if status is None:
        status = code if isinstance(code, int) and 400 <= code <= 599 else 500
    detail = getattr(exc, "detail", None)
    message = detail if isinstance(detail, str) else str(exc)
    error = {"type": type(exc).__name__, "message": message,
             "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))}
    return Outcome(status="ok", frames=[orjson.dumps({"status": status, "error": error})])


def _response(meta: dict[str, Any], body: Any) -> Outcome:
    return Outcome(status="ok", frames=[orjson.dumps(meta), body])
