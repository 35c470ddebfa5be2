"""Keeping secrets out of text: what reprs, error messages and saved records show of settings.

A setting is secret when its key names one (:data:`SECRET_WORDS`), or when its value holds a
private key's contents.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Keys whose values are secret (matched as substrings, case-insensitive).
SECRET_WORDS = ("password", "passphrase", "secret", "token", "api_key", "apikey")
HIDDEN = "<hidden>"


def is_secret_key(key: object) -> bool:
    return any(word in str(key).lower() for word in SECRET_WORDS)


def holds_private_key(value: object) -> bool:
    return isinstance(value, str) and "PRIVATE KEY-----" in value


def hide_secrets(value: Any) -> Any:
    """``value`` (settings: mappings, lists, plain values) with every secret replaced by ``<hidden>``."""
    if isinstance(value, Mapping):
        return {key: HIDDEN if is_secret_key(key) and item is not None else hide_secrets(item)
                for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(hide_secrets(item) for item in value)
    return HIDDEN if holds_private_key(value) else value


def secrets_hidden(value: Any) -> str:
    """The repr of ``value`` with its secrets hidden: ``attrs.field(repr=secrets_hidden)``."""
    return repr(hide_secrets(value))
