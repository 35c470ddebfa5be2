"""A real HTTP client for the endpoint and app tests: the standard library's, as a user's script would use."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request


def http(url: str, body=None, *, token: str | None = None, method: str | None = None,
         content_type: str = "application/json", context: ssl.SSLContext | None = None,
         headers: dict[str, str] | None = None):
    """``(status, content type, body)`` of one request; a JSON ``body`` unless it is bytes."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=60, context=context) as response:
            return response.status, response.headers.get_content_type(), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get_content_type(), error.read()


def ok(url: str, body=None, **kwargs):
    status, content_type, data = http(url, body, **kwargs)
    assert status == 200, (status, data)
    return json.loads(data) if content_type == "application/json" else data
