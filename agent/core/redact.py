"""How a secret is hidden, in every place the agent shows something: one rule, one marker.

Log lines, ``nodeadm`` events, controller error messages, diagnostics bundles and config or
NodeConfig dumps all go through here, so a secret looks the same (``<redacted>``) wherever it
would have appeared. Two rules, applied together:

- **By name.** A value under a secret-named key is replaced whatever it holds, at any depth
  and whatever the secret's length. A key is secret-named when, lower-cased and without
  ``_`` and ``-``, it ends with one of `SECRET_KEYS`: ``activation_code``, ``activationCode``
  and ``X-Activation-Code`` are one name, and ``host_token`` or ``client_secret`` are caught
  by their ending. A key that merely names where a secret lives (``password_file``,
  ``privateKeyPath``) is not a secret and stays readable.
- **By value.** Every occurrence of a known secret inside a string is replaced, longest
  secret first, so a secret that contains another is not left half visible. A "secret"
  shorter than `MIN_SECRET_LEN` characters (a test value, a misconfigured code) is not used
  for substring replacement: striking ``abc`` out of every line would mangle ordinary words
  without protecting anything. Real ones (an SSM activation code, the controller's tokens)
  are far longer. Surrounding whitespace is not part of a secret.

Pure and total: no I/O, and any value goes in (what is not a string, list, tuple or mapping
comes back as it is; tuples come back as lists, as JSON would have them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import overload

__all__ = [
    "MIN_SECRET_LEN",
    "REDACTED",
    "SECRET_KEYS",
    "UsableSecrets",
    "is_secret_key",
    "scrub",
    "scrub_text",
    "usable_secrets",
]

REDACTED = "<redacted>"
MIN_SECRET_LEN = 8
# Key endings, in the normal form `is_secret_key` compares (lower case, no "_" or "-").
SECRET_KEYS = frozenset(
    {
        "activationcode",
        "authorization",
        "password",
        "privatekey",
        "secret",
        "secretaccesskey",
        "token",
    }
)
_ENDINGS = tuple(sorted(SECRET_KEYS))
# What a JSON-like walk returns as it is, tested before the costlier Mapping check.
_SCALARS = (int, float, type(None))


def is_secret_key(key: object) -> bool:
    """Whether a value under `key` is a secret by its name alone."""
    if not isinstance(key, str):
        return False
    name = key.lower()
    if "_" in name or "-" in name:
        name = name.replace("_", "").replace("-", "")
    return name.endswith(_ENDINGS)


class UsableSecrets(tuple[str, ...]):
    """Secrets already sorted out by `usable_secrets`: scrubbing many values with one of
    these (every field of a log line) does not sort the same secrets again for each."""

    __slots__ = ()


def usable_secrets(secrets: Iterable[str]) -> UsableSecrets:
    """The secrets long enough to strike out of text, longest first, each once."""
    if isinstance(secrets, UsableSecrets):
        return secrets
    found = {s.strip() for s in secrets}
    long_enough = (s for s in found if len(s) >= MIN_SECRET_LEN)
    return UsableSecrets(sorted(long_enough, key=len, reverse=True))


def scrub_text(text: str, secrets: Iterable[str]) -> str:
    """`text` with every usable secret replaced by `REDACTED`, longest first."""
    return _strike(text, usable_secrets(secrets))


@overload
def scrub(value: str, secrets: Iterable[str]) -> str: ...
@overload
def scrub(value: Mapping[str, object], secrets: Iterable[str]) -> dict[str, object]: ...
@overload
def scrub(value: object, secrets: Iterable[str]) -> object: ...
def scrub(value: object, secrets: Iterable[str]) -> object:
    """A copy of a JSON-like `value` with secret-named keys masked and secrets struck out."""
    return _scrub(value, usable_secrets(secrets))


def _strike(text: str, usable: Sequence[str]) -> str:
    for secret in usable:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def _scrub(value: object, usable: Sequence[str]) -> object:
    # Every field of every log line comes through here: the common cases first.
    if isinstance(value, str):
        return _strike(value, usable)
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, (dict, Mapping)):
        return {k: REDACTED if is_secret_key(k) else _scrub(v, usable) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v, usable) for v in value]
    return value
