"""Who may use a farm: its tokens, the name holding each, and keeping them away from tests.

A served farm accepts the single token of ``[farm] token_file`` (or
``PSYDUCK_TOKEN``), held by the admin :data:`DEFAULT_NAME`, and the named
tokens of ``[farm] tokens_file``, one per line::

    # NAME   TOKEN                          [admin]
    alice    3q2+7wX0...
    ci       Zr9c0bXk...                    admin

Blank lines and lines starting with ``#`` are ignored.  A name is 1-64
letters, digits and ``_.@-``; a token is at least :data:`MIN_TOKEN_LENGTH`
printable ASCII characters without spaces (what an HTTP header carries
unchanged; the single token needs only the characters, as it always has).
A run belongs to the name that submitted it: only that name or an admin may
cancel or watch it.  The operator swaps the file and sends SIGHUP;
the CLI rereads it through :func:`parse_tokens` and :meth:`Tokens.replace`.

The farm's credentials must never reach a test: :func:`without_credentials`
is the one filter every worker environment goes through.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Collection, Mapping, MutableMapping
from dataclasses import dataclass

#: Who holds the single token of ``token_file`` / ``PSYDUCK_TOKEN``; an admin.
DEFAULT_NAME = "default"
MIN_TOKEN_LENGTH = 8
#: The farm's own variables that carry credentials; never in a worker's environment.
CREDENTIAL_VARIABLES = frozenset({"PSYDUCK_TOKEN", "POKEDEX_TOKEN"})

_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
_TOKEN = re.compile(r"[\x21-\x7e]+")


class TokensError(ValueError):
    """A tokens file (or token) that cannot be used; the text names the line, never a token."""


@dataclass(frozen=True)
class Holder:
    """Who presented a token."""

    name: str
    admin: bool = False

    def may_touch(self, owner: str) -> bool:
        """Whether this holder may cancel or watch a run submitted by *owner*."""
        return self.admin or self.name == owner


def check_token(token: str, where: str, min_length: int = 1) -> str:
    """*token* if an HTTP header can carry it unchanged; else TokensError naming *where*."""
    if len(token) < min_length or not _TOKEN.fullmatch(token):
        raise TokensError(
            f"{where}: a token must be at least {min_length} printable ASCII "
            "characters without spaces"
        )
    return token


def parse_tokens(text: str, source: str) -> dict[str, Holder]:
    """token → holder from a tokens file's *text*; *source* names the file in errors."""
    holders: dict[str, Holder] = {}
    names: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        where = f"{source} line {number}"
        if len(fields) not in (2, 3) or (len(fields) == 3 and fields[2] != "admin"):
            raise TokensError(f"{where}: expected 'NAME TOKEN' or 'NAME TOKEN admin'")
        name, token = fields[0], check_token(fields[1], where, MIN_TOKEN_LENGTH)
        if not _NAME.fullmatch(name):
            raise TokensError(f"{where}: name {name!r} must be 1-64 letters, digits or _.@-")
        if name in names:
            raise TokensError(f"{where}: name {name!r} appears twice")
        if token in holders:
            raise TokensError(f"{where}: {name!r} has the same token as {holders[token].name!r}")
        names.add(name)
        holders[token] = Holder(name, admin=len(fields) == 3)
    return holders


def merge_default(holders: Mapping[str, Holder], default: str | None) -> dict[str, Holder]:
    """*holders* plus the single *default* token, held by the admin :data:`DEFAULT_NAME`."""
    merged = dict(holders)
    if default is not None:
        check_token(default, "the token_file (or PSYDUCK_TOKEN)")
        for token, holder in holders.items():
            if holder.name == DEFAULT_NAME:
                raise TokensError(f"the name {DEFAULT_NAME!r} is the token_file's holder")
            if hmac.compare_digest(token, default):
                raise TokensError(f"{holder.name!r} has the same token as the token_file")
        merged[default] = Holder(DEFAULT_NAME, admin=True)
    if not merged:
        raise TokensError("no token: a farm never runs open")
    return merged


def bearer(header: str | None) -> bytes | None:
    """The token of an ``Authorization: Bearer <token>`` header, None for anything else."""
    if not header or not header.isascii():
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip().encode()


class Tokens:
    """The tokens a farm accepts now; :meth:`replace` swaps them while it serves."""

    def __init__(self, holders: Mapping[str, Holder]) -> None:
        self.replace(holders)

    @classmethod
    def single(cls, token: str) -> Tokens:
        """One token, held by the admin :data:`DEFAULT_NAME` (the embedded farm's case)."""
        return cls({token: Holder(DEFAULT_NAME, admin=True)})

    def replace(self, holders: Mapping[str, Holder]) -> None:
        self._holders = [(token.encode(), holder) for token, holder in holders.items()]

    def values(self) -> tuple[str, ...]:
        """Every token accepted now (for the farm's own pokedex and for scrubbing)."""
        return tuple(token.decode() for token, _ in self._holders)

    def names(self) -> list[str]:
        return sorted(holder.name for _, holder in self._holders)

    def holder(self, header: str | None) -> Holder | None:
        """Who an ``Authorization`` header belongs to; None if nobody's.

        Every token is compared, in constant time, whatever matches first.
        """
        given = bearer(header)
        if given is None:
            return None
        found = None
        for token, holder in self._holders:
            if hmac.compare_digest(given, token):
                found = holder
        return found


def without_credentials(
    environ: Mapping[str, str], secrets: Collection[str] = ()
) -> dict[str, str]:
    """*environ* less the farm's credential variables and any value holding one of *secrets*."""
    return {
        key: value
        for key, value in environ.items()
        if key not in CREDENTIAL_VARIABLES and not any(s in value for s in secrets)
    }


def scrub(environ: MutableMapping[str, str], secrets: Collection[str] = ()) -> None:
    """Remove from *environ* (the farm's own ``os.environ``) what a child must not inherit."""
    kept = without_credentials(environ, secrets)
    for key in [k for k in environ if k not in kept]:
        del environ[key]
