"""Worker keys: `ariel_wk_<prefix>_<secret>`, what a worker on an org's own hardware presents to the gateway.

Made and stored like API keys (shown once, kept as a salted hash, found by
their prefix), but a different credential: a worker key opens the org's
own-hardware pool at the Prefect gateway and nothing of the MCP surface, and
an API key opens nothing at the gateway.

Example:
    >>> key = new_worker_key()
    >>> key.plaintext.startswith("ariel_wk_" + key.prefix + "_")
    True
    >>> worker_key_prefix(key.plaintext) == key.prefix, worker_key_prefix("ariel_" + key.prefix + "_x" * 43)
    (True, None)
"""

from __future__ import annotations

import re

from .api_keys import NewApiKey, key_matches, new_key

WORKER_KEY_PREFIX = "ariel_wk_"
_WORKER_KEY = re.compile(r"ariel_wk_(?P<prefix>[0-9a-f]{8})_[A-Za-z0-9_-]{43,256}")


def new_worker_key() -> NewApiKey:
    return new_key(WORKER_KEY_PREFIX)


def worker_key_prefix(token: str) -> str | None:
    """The prefix to look a presented worker key up by; None when it is not shaped like one."""
    match = _WORKER_KEY.fullmatch(token)
    return match["prefix"] if match else None


def verify_worker_key(token: str, key_hash: str) -> bool:
    return worker_key_prefix(token) is not None and key_matches(token, key_hash)
