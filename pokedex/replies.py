"""HTTP-facing pure helpers shared by the blob API and the registry face.

Error replies, the token check and request-body parsing live here, free of any server
state, so they can be tested directly and so handlers stay thin.
"""

from __future__ import annotations

import base64
import errno
import hmac
import json
from typing import Any

import msgpack
from aiohttp import web

from . import digest as dg
from .bodies import BodyTooLarge

MAX_MISSING = 10_000  # digests per /missing request
MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class ApiError(Exception):
    """A client error with an HTTP status, a machine-readable code and a human message."""

    def __init__(self, status: int, code: str, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail


def require_digest(value: Any, what: str = "digest") -> str:
    """``value`` if it is a well-formed digest, else ApiError(400, DIGEST_INVALID)."""
    if not dg.is_digest(value):
        raise ApiError(
            400, "DIGEST_INVALID", f"{what} is not sha256:<64 hex>: {str(value)[:100]!r}"
        )
    return value


def body_too_large(err: BodyTooLarge) -> ApiError:
    """The 413 reply for a request body over its limit."""
    return ApiError(413, "SIZE_INVALID", f"request {err}")


def storage_full(err: OSError) -> ApiError | None:
    """The 507 reply for a write that found the disk (or the quota) full; None for any
    other OS error, which stays a server fault."""
    if err.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    return ApiError(
        507,
        "INSUFFICIENT_STORAGE",
        f"this node is out of storage space ({err.strerror}); nothing was stored, "
        "try again once space is freed",
    )


def error_body(path: str, code: str, message: str, detail: Any = None) -> dict[str, Any]:
    """The JSON error document: the OCI spec shape under ``/v2``, a flat one elsewhere."""
    if path.startswith("/v2"):
        return {"errors": [{"code": code, "message": message, "detail": detail}]}
    body: dict[str, Any] = {"error": code, "message": message}
    if detail is not None:
        body["detail"] = detail
    return body


def error_response(path: str, err: ApiError) -> web.Response:
    headers = {}
    if err.status == 401:
        headers["WWW-Authenticate"] = (
            'Basic realm="pokedex"' if path.startswith("/v2") else 'Bearer realm="pokedex"'
        )
    return web.json_response(
        error_body(path, err.code, err.message, err.detail), status=err.status, headers=headers
    )


def needs_auth(method: str, path: str, auth_reads: bool) -> bool:
    """Whether a request must carry the token (only asked when a token is configured).

    Writes always do. Reads do with ``auth_reads``, and ``GET /v2/`` always does: Docker
    decides from that ping whether (and how) to send the credentials of ``docker login``,
    so answering it anonymously would make authenticated pushes impossible.
    """
    if method not in READ_METHODS:
        return True
    if path in ("/v2", "/v2/"):
        return True
    return auth_reads


def authorized(header: str | None, token: str) -> bool:
    """``Bearer <token>``, or ``Basic`` with the token as password (any user): docker login."""
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except ValueError:
            return False
        value = decoded.partition(":")[2]
    elif scheme.lower() != "bearer":
        return False
    try:
        given = value.encode()
    except UnicodeEncodeError:  # header bytes that are not UTF-8 cannot spell the token
        return False
    return hmac.compare_digest(given, token.encode())


def decode_body(content_type: str, body: bytes) -> Any:
    """JSON or msgpack request body; ApiError(400) if it is neither (or nested too deeply)."""
    try:
        if content_type in MSGPACK_TYPES:
            return msgpack.unpackb(body, raw=False, strict_map_key=True)
        return json.loads(body)
    except (RecursionError, msgpack.StackError):
        raise ApiError(400, "BAD_BODY", "body is nested too deeply") from None
    except (ValueError, msgpack.UnpackException, UnicodeDecodeError) as e:
        raise ApiError(400, "BAD_BODY", f"body is not valid JSON/msgpack: {e}") from None


def encode_body(content_type: str, value: Any) -> web.Response:
    """Reply in the encoding the request used."""
    if content_type in MSGPACK_TYPES:
        return web.Response(body=msgpack.packb(value), content_type="application/msgpack")
    return web.json_response(value)


def parse_digest_list(value: Any) -> list[str]:
    """``{"digests": [...]}`` or a bare list, every item a valid digest, at most MAX_MISSING."""
    if isinstance(value, dict):
        value = value.get("digests")
    if not isinstance(value, list):
        raise ApiError(400, "BAD_BODY", 'want {"digests": ["sha256:...", ...]}')
    if len(value) > MAX_MISSING:
        raise ApiError(413, "TOO_MANY", f"at most {MAX_MISSING} digests per request")
    for item in value:
        require_digest(item)
    return value


_UNSET = object()


def parse_ref_update(value: Any) -> tuple[str | None, bool, str | None]:
    """``{"digest": d|null, "expected": d|null}`` → (new value, check?, expected value).

    ``expected`` absent: unconditional set. ``expected: null``: only if the ref is unset.
    ``digest: null`` deletes the ref.
    """
    if not isinstance(value, dict) or "digest" not in value:
        raise ApiError(400, "BAD_BODY", 'want {"digest": "sha256:...", "expected": ...}')
    new = value["digest"]
    if new is not None:
        require_digest(new)
    expected = value.get("expected", _UNSET)
    if expected is _UNSET:
        return new, False, None
    if expected is not None:
        require_digest(expected, "expected")
    return new, True, expected
