"""The Docker/OCI registry face: the Distribution API (``/v2/``) over the same blob store.

Layers, configs and manifests are ordinary pokedex blobs (so they are replicated, repaired and
deduplicated like everything else); a tag is the ref ``oci/<repository>:<tag>``. Repositories
only scope tags: the blob namespace is shared, so a cross-repository mount of a blob the
cluster has always succeeds.

Upload sessions (POST → PATCH… → PUT, or POST → PUT with the whole body) are files under the
node's ``uploads/`` directory and are finished on the node that started them (clients follow
the ``Location`` header, which points back here). The final PUT hashes the session file and
moves it into the store only if the digest matches.

Authentication: see :func:`pokedex.replies.needs_auth` — with a token configured, ``GET /v2/``
and every write need ``docker login`` credentials (any user, the token as password); other
reads need them only with ``--auth-reads``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from . import digest as dg
from . import names
from .bodies import BodyTooLarge, read_body
from .durable import DigestMismatch, SizeError, pump
from .replies import ApiError, require_digest

if TYPE_CHECKING:
    from .server import Node

MAX_MANIFEST = 4 << 20
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST_TYPES = (DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX)
_SESSION_RE = re.compile(r"[0-9a-f]{32}")
API_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}


def tag_ref(repository: str, tag: str) -> str:
    return f"oci/{repository}:{tag}"


def parse_manifest(body: bytes, content_type: str | None) -> tuple[str, list[str]]:
    """(media type, digests it references) of a manifest; ApiError(400) if it is garbage.

    Pure. Accepts Docker schema 2 manifests and lists, OCI manifests and indexes. The media
    type comes from the document's ``mediaType`` field, else the request's Content-Type, else
    its shape (OCI documents may omit the field).
    """

    def invalid(why: str) -> ApiError:
        return ApiError(400, "MANIFEST_INVALID", f"manifest invalid: {why}")

    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise invalid("not JSON") from None
    except RecursionError:
        raise invalid("nested too deeply") from None
    if not isinstance(doc, dict) or doc.get("schemaVersion") != 2:
        raise invalid("want a JSON object with schemaVersion 2")
    media = doc.get("mediaType")
    if media is None:
        media = content_type if content_type in MANIFEST_TYPES else None
    if media is None:
        media = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    if media not in MANIFEST_TYPES:
        raise invalid(f"unsupported mediaType {str(media)[:100]!r}")
    if media in (DOCKER_LIST, OCI_INDEX):
        descriptors = doc.get("manifests")
        if not isinstance(descriptors, list):
            raise invalid("index without a manifests list")
    else:
        layers = doc.get("layers")
        if not isinstance(layers, list) or not isinstance(doc.get("config"), dict):
            raise invalid("manifest without config and layers")
        descriptors = [doc["config"], *layers]
    refs = []
    for desc in descriptors:
        if not isinstance(desc, dict) or not dg.is_digest(desc.get("digest")):
            raise invalid("descriptor without a valid sha256 digest")
        if desc.get("urls"):  # foreign layers live elsewhere by design
            continue
        refs.append(desc["digest"])
    return media, refs


def _repo(request: web.Request) -> str:
    try:
        return names.check_repository(request.match_info["name"])
    except names.NameError_ as e:
        raise ApiError(400, "NAME_INVALID", str(e)) from None


class Registry:
    """Handlers of the ``/v2/`` API for one node."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.store = node.store
        self.hashers: dict[str, dg.Hasher] = {}  # upload session -> hash of its bytes so far

    def add_routes(self, app: web.Application) -> None:
        name = "/v2/{name:.+}"
        r = app.router
        r.add_get("/v2/", self.ping)
        r.add_get("/v2", self.ping)
        r.add_get("/v2/_catalog", self.catalog)
        r.add_post(name + "/blobs/uploads/", self.start_upload)
        r.add_patch(name + "/blobs/uploads/{session}", self.patch_upload)
        r.add_put(name + "/blobs/uploads/{session}", self.finish_upload)
        r.add_get(name + "/blobs/uploads/{session}", self.upload_status)
        r.add_delete(name + "/blobs/uploads/{session}", self.cancel_upload)
        r.add_get(name + "/blobs/{digest}", self.get_blob, allow_head=False)
        r.add_head(name + "/blobs/{digest}", self.get_blob)
        r.add_get(name + "/manifests/{reference}", self.get_manifest, allow_head=False)
        r.add_head(name + "/manifests/{reference}", self.get_manifest)
        r.add_put(name + "/manifests/{reference}", self.put_manifest)
        r.add_delete(name + "/manifests/{reference}", self.unsupported)
        r.add_delete(name + "/blobs/{digest}", self.unsupported)
        r.add_get(name + "/tags/list", self.tags)
        app.on_response_prepare.append(self._api_header)

    async def _api_header(self, request: web.Request, response: web.StreamResponse) -> None:
        if request.path.startswith("/v2"):
            response.headers.update(API_HEADER)

    async def ping(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def unsupported(self, request: web.Request) -> web.Response:
        raise ApiError(405, "UNSUPPORTED", "deletion is not supported by pokedex")

    async def catalog(self, request: web.Request) -> web.Response:
        refs = await self.node.ref_api.values("oci/")
        repos = sorted({name[4:].rsplit(":", 1)[0] for name in refs})
        return web.json_response({"repositories": repos})

    async def tags(self, request: web.Request) -> web.Response:
        repo = _repo(request)
        prefix = tag_ref(repo, "")
        refs = await self.node.ref_api.values(prefix)
        if not refs:
            raise ApiError(404, "NAME_UNKNOWN", f"repository {repo!r} has no tags")
        return web.json_response({"name": repo, "tags": [n[len(prefix) :] for n in refs]})

    # -- blobs -------------------------------------------------------------------------------

    async def get_blob(self, request: web.Request) -> web.StreamResponse:
        _repo(request)
        d = require_digest(request.match_info["digest"])
        if request.method == "HEAD":
            return await self.node.head_blob(request, d)
        return await self.node.serve_blob(request, d)

    def _session_path(self, request: web.Request) -> tuple[str, str]:
        sid = request.match_info["session"]
        if not _SESSION_RE.fullmatch(sid):
            raise ApiError(404, "BLOB_UPLOAD_UNKNOWN", "no such upload session")
        path = self.store.upload_root / sid
        if not path.is_file():
            raise ApiError(404, "BLOB_UPLOAD_UNKNOWN", "no such upload session")
        return sid, str(path)

    def _session_reply(self, status: int, repo: str, sid: str, size: int) -> web.Response:
        return web.Response(
            status=status,
            headers={
                "Location": f"/v2/{repo}/blobs/uploads/{sid}",
                "Docker-Upload-UUID": sid,
                "Range": f"0-{max(size - 1, 0)}",
                "Content-Length": "0",
            },
        )

    def _created(self, repo: str, d: str) -> web.Response:
        return web.Response(
            status=201,
            headers={
                "Location": f"/v2/{repo}/blobs/{d}",
                "Docker-Content-Digest": d,
                "Content-Length": "0",
            },
        )

    async def start_upload(self, request: web.Request) -> web.Response:
        repo = _repo(request)
        mount = request.query.get("mount")
        if mount is not None and dg.is_digest(mount) and await self.node.exists(mount):
            return self._created(repo, mount)
        if "digest" in request.query:  # monolithic: POST with the whole blob
            d = require_digest(request.query["digest"])
            await self.node.store_blob(request, d)
            return self._created(repo, d)
        sid = uuid.uuid4().hex
        (self.store.upload_root / sid).touch()
        self.hashers[sid] = dg.Hasher()
        return self._session_reply(202, repo, sid, 0)

    async def _append(self, request: web.Request, sid: str, path: str) -> int:
        """Append the request body to a session file; returns the new total size.

        The session's hash state is kept in memory across PATCHes, so the final PUT does not
        re-read the file (after a restart it does: the state is then missing). A body that
        fails part-way (the disk fills up, the client breaks off, it is too large) is cut
        off again, so the session stays at the size the client last had acknowledged.
        """
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            size = os.fstat(fd).st_size
            content_range = request.headers.get("Content-Range")
            if content_range:
                m = re.fullmatch(r"(?:bytes )?(\d+)-(\d+)", content_range.strip())
                if not m or int(m.group(1)) != size:
                    raise ApiError(416, "BLOB_UPLOAD_INVALID", f"upload is at byte {size}")
            hasher = self.hashers.pop(sid, None)
            if hasher is None or hasher.size != size:
                hasher = None  # lost or out of step: the final PUT re-hashes the file
            try:
                added = await pump(
                    request.content.iter_any(),
                    fd,
                    hasher or dg.Hasher(),
                    limit=self.node.max_blob - size,
                )
            except BaseException:
                os.ftruncate(fd, size)  # the hash state saw the cut bytes: it is dropped
                raise
            if hasher is not None:
                self.hashers[sid] = hasher
            return size + added
        except SizeError:
            raise ApiError(413, "SIZE_INVALID", "blob too large") from None
        finally:
            os.close(fd)

    async def patch_upload(self, request: web.Request) -> web.Response:
        repo = _repo(request)
        sid, path = self._session_path(request)
        size = await self._append(request, sid, path)
        return self._session_reply(202, repo, sid, size)

    async def finish_upload(self, request: web.Request) -> web.Response:
        repo = _repo(request)
        d = require_digest(request.query.get("digest"))
        sid, path = self._session_path(request)
        await self._append(request, sid, path)
        hasher = self.hashers.pop(sid, None)
        try:
            if hasher is None:
                await asyncio.to_thread(self.store.adopt, Path(path), d)
            elif hasher.digest() != d:
                raise DigestMismatch(f"content digest is {hasher.digest()}, not {d}")
            else:
                await asyncio.to_thread(self.store.install, Path(path), d)
        except DigestMismatch as e:
            os.unlink(path)
            raise ApiError(400, "DIGEST_INVALID", str(e)) from None
        await self.node.cluster.replicate(d)
        return self._created(repo, d)

    async def upload_status(self, request: web.Request) -> web.Response:
        repo = _repo(request)
        sid, path = self._session_path(request)
        return self._session_reply(204, repo, sid, os.path.getsize(path))

    async def cancel_upload(self, request: web.Request) -> web.Response:
        _repo(request)
        sid, path = self._session_path(request)
        self.hashers.pop(sid, None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return web.Response(status=204)

    # -- manifests ---------------------------------------------------------------------------

    async def _resolve(self, repo: str, reference: str) -> str | None:
        if dg.is_digest(reference):
            return reference
        try:
            names.check_tag(reference)
        except names.NameError_ as e:
            raise ApiError(400, "TAG_INVALID", str(e)) from None
        status, value = await self.node.ref_api.call("GET", tag_ref(repo, reference))
        return value["digest"] if status == 200 else None

    async def get_manifest(self, request: web.Request) -> web.Response:
        repo = _repo(request)
        reference = request.match_info["reference"]
        d = await self._resolve(repo, reference)
        try:
            body = None if d is None else await self.node.small_blob(d, MAX_MANIFEST)
        except BodyTooLarge as e:
            raise ApiError(404, "MANIFEST_UNKNOWN", f"{d} is not a manifest: {e}") from None
        if d is None or body is None:
            raise ApiError(404, "MANIFEST_UNKNOWN", f"manifest {reference[:100]!r} unknown")
        try:
            media, _ = parse_manifest(body, None)
        except ApiError:
            raise ApiError(404, "MANIFEST_UNKNOWN", f"{d} is not a manifest") from None
        headers = {"Docker-Content-Digest": d, "ETag": f'"{d}"', "Content-Type": media}
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(body))
            return web.Response(headers=headers)
        return web.Response(body=body, headers=headers)

    async def put_manifest(self, request: web.Request) -> web.Response:
        repo = _repo(request)
        reference = request.match_info["reference"]
        if not dg.is_digest(reference):
            try:
                names.check_tag(reference)
            except names.NameError_ as e:
                raise ApiError(400, "TAG_INVALID", str(e)) from None
        try:
            body = await read_body(request.content, MAX_MANIFEST, request.content_length)
        except BodyTooLarge as e:
            raise ApiError(413, "SIZE_INVALID", f"manifest {e}") from None
        _, refs = parse_manifest(body, request.content_type)
        d = dg.of_bytes(body)
        if dg.is_digest(reference) and reference != d:
            raise ApiError(400, "DIGEST_INVALID", f"manifest digest is {d}, not {reference}")
        absent = await self.node.cluster.missing_cluster(refs)
        if absent:
            raise ApiError(
                400, "MANIFEST_BLOB_UNKNOWN", "manifest references unknown blobs", absent[:20]
            )
        self.store.put_bytes(body, d)
        await self.node.cluster.replicate(d)
        if not dg.is_digest(reference):
            status, value = await self.node.ref_api.call(
                "PUT", tag_ref(repo, reference), {"digest": d}
            )
            if status != 200:
                raise ApiError(status, "TAG_INVALID", str(value)[:200])
        return web.Response(
            status=201,
            headers={
                "Location": f"/v2/{repo}/manifests/{d}",
                "Docker-Content-Digest": d,
                "Content-Length": "0",
            },
        )
