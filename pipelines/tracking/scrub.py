"""What reaches MLflow is cleaned: no secrets, no home directory, values within MLflow's limits.

The value of any environment variable whose name looks like a secret (TOKEN, SECRET, PASSWORD,
KEY, CREDENTIAL) becomes ``***``, ``user:password@`` in URLs ``***@``, the user's home
directory ``~``; in params, tags, dict/text artifacts and text files logged as artifacts
(manifests, tables) alike.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

# Limits of MLflow's built-in stores (mlflow.utils.validation).
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000

_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY", re.I)
_URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def _secret_values() -> list[str]:
    """Values of environment variables named like secrets, longest first (8+ characters: a
    short value would blank out ordinary words)."""
    values = {v for k, v in os.environ.items() if _SECRET_NAME.search(k) and len(v) >= 8}
    return sorted(values, key=len, reverse=True)


def scrub(text: str) -> str:
    """`text` without secrets or the home directory: secret env values -> ***, user:password@
    in URLs -> ***@, the home directory -> ~."""
    for secret in _secret_values():
        text = text.replace(secret, "***")
    text = _URL_USERINFO.sub("***@", text)
    home = os.path.expanduser("~").rstrip("/")
    if home and home != "/":  # root's home is "/root"; a bare "/" would match every path
        text = re.sub(re.escape(home) + r"(?![\w.-])", "~", text)
    return text


def scrub_value(value: Any) -> Any:
    """`scrub` applied to every string inside nested mappings and sequences."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, Mapping):
        return {k: scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_value(v) for v in value]
    return value


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return scrub(text)[:MAX_PARAM_VALUE]


def flatten_params(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping -> ``{"train.K": "50", "model.hidden": "[200, 200]", ...}``: dotted keys,
    non-strings as JSON, values cut at MLflow's 6000 characters."""
    out: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, f"{name}."))
        else:
            out[name] = _param_value(value)
    return out


__all__ = ["MAX_PARAM_VALUE", "MAX_TAG_VALUE", "flatten_params", "scrub", "scrub_value"]
