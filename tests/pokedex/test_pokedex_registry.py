"""The registry face: the Distribution API over HTTP, then real docker and skopeo."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from pokedex_testlib import TOKEN, ThreadedNode, docker_ready, nodes

from pokedex import digest as dg

DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def _manifest(config: str, layers: list[str]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_V2,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "digest": config,
                "size": 2,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "digest": d,
                    "size": 1,
                }
                for d in layers
            ],
        }
    ).encode()


def test_distribution_api_flows(tmp_path: Path) -> None:
    layer = os.urandom(3 << 20)
    layer_d = dg.of_bytes(layer)
    config = b"{}"
    config_d = dg.of_bytes(config)

    async def go() -> None:
        async with nodes(tmp_path) as [n], aiohttp.ClientSession() as http:
            base = f"{n.url}/v2"
            async with http.get(f"{base}/") as r:
                assert r.status == 200
                assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
            # Classic: POST -> PATCH x2 -> PUT.
            async with http.post(f"{base}/lib/app/blobs/uploads/") as r:
                assert r.status == 202
                loc = r.headers["Location"]
            async with http.patch(
                n.url + loc, data=layer[:1000], headers={"Content-Range": "0-999"}
            ) as r:
                assert r.status == 202 and r.headers["Range"] == "0-999"
                loc = r.headers["Location"]
            async with http.patch(
                n.url + loc, data=layer[:10], headers={"Content-Range": "0-9"}
            ) as r:
                assert r.status == 416  # out of order chunk
            async with http.patch(n.url + loc, data=layer[1000:]) as r:
                assert r.status == 202
            async with http.put(f"{n.url}{loc}?digest={dg.of_bytes(b'wrong')}") as r:
                assert r.status == 400
                assert (await r.json())["errors"][0]["code"] == "DIGEST_INVALID"
            async with http.post(f"{base}/lib/app/blobs/uploads/") as r:
                loc = r.headers["Location"]
            async with http.patch(n.url + loc, data=layer) as r:
                assert r.status == 202
            async with http.put(f"{n.url}{loc}?digest={layer_d}") as r:
                assert r.status == 201 and r.headers["Docker-Content-Digest"] == layer_d
            # Monolithic: POST -> single PUT with the body.
            async with http.post(f"{base}/lib/app/blobs/uploads/") as r:
                loc = r.headers["Location"]
            async with http.put(f"{n.url}{loc}?digest={config_d}", data=config) as r:
                assert r.status == 201
            # Cross-repository mount.
            async with http.post(
                f"{base}/other/app/blobs/uploads/?mount={layer_d}&from=lib/app"
            ) as r:
                assert r.status == 201 and r.headers["Docker-Content-Digest"] == layer_d
            # Blob HEAD/GET/Range, unknown blob error body.
            async with http.head(f"{base}/other/app/blobs/{layer_d}") as r:
                assert r.status == 200 and int(r.headers["Content-Length"]) == len(layer)
            async with http.get(
                f"{base}/other/app/blobs/{layer_d}", headers={"Range": "bytes=5-9"}
            ) as r:
                assert r.status == 206 and await r.read() == layer[5:10]
            async with http.get(f"{base}/lib/app/blobs/{dg.of_bytes(b'nope')}") as r:
                assert r.status == 404
                assert (await r.json())["errors"][0]["code"] == "BLOB_UNKNOWN"
            # Manifests: unknown blob, garbage, then good by tag and digest.
            bad = _manifest(config_d, [dg.of_bytes(b"missing layer")])
            async with http.put(
                f"{base}/lib/app/manifests/v1", data=bad, headers={"Content-Type": DOCKER_V2}
            ) as r:
                assert r.status == 400
                assert (await r.json())["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
            async with http.put(f"{base}/lib/app/manifests/v1", data=b"{garbage") as r:
                assert (await r.json())["errors"][0]["code"] == "MANIFEST_INVALID"
            good = _manifest(config_d, [layer_d])
            good_d = dg.of_bytes(good)
            async with http.put(
                f"{base}/lib/app/manifests/v1", data=good, headers={"Content-Type": DOCKER_V2}
            ) as r:
                assert r.status == 201 and r.headers["Docker-Content-Digest"] == good_d
            for ref in ("v1", good_d):
                async with http.get(f"{base}/lib/app/manifests/{ref}") as r:
                    assert r.status == 200 and await r.read() == good
                    assert r.headers["Content-Type"] == DOCKER_V2
                    assert r.headers["Docker-Content-Digest"] == good_d
                async with http.head(f"{base}/lib/app/manifests/{ref}") as r:
                    assert r.status == 200 and int(r.headers["Content-Length"]) == len(good)
            async with http.get(f"{base}/lib/app/manifests/v2") as r:
                assert (await r.json())["errors"][0]["code"] == "MANIFEST_UNKNOWN"
            async with http.get(f"{base}/lib/app/tags/list") as r:
                assert await r.json() == {"name": "lib/app", "tags": ["v1"]}
            async with http.get(f"{base}/_catalog") as r:
                assert "lib/app" in (await r.json())["repositories"]
            async with http.get(f"{base}/UPPER/manifests/v1") as r:
                assert (await r.json())["errors"][0]["code"] == "NAME_INVALID"

    asyncio.run(go())


def test_registry_writes_need_basic_auth_when_token_set(threaded_node: ThreadedNode) -> None:
    import base64
    import urllib.error
    import urllib.request

    def status(method: str, path: str, auth: str | None = None) -> int:
        req = urllib.request.Request(threaded_node.url + path, method=method)
        if auth:
            req.add_header("Authorization", auth)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            assert e.status != 401 or "Basic" in e.headers["WWW-Authenticate"]
            return e.status

    basic = "Basic " + base64.b64encode(f"me:{TOKEN}".encode()).decode()
    assert status("GET", "/v2/") == 401
    assert status("GET", "/v2/", basic) == 200
    assert status("POST", "/v2/a/blobs/uploads/") == 401
    assert status("POST", "/v2/a/blobs/uploads/", basic) == 202
    assert status("GET", "/v2/a/manifests/latest") == 404  # reads stay open


# -- real docker and skopeo -------------------------------------------------------------------


def _run(*cmd: str, env: dict[str, str] | None = None, input_: bytes | None = None) -> str:
    r = subprocess.run(cmd, capture_output=True, timeout=300, env=env, input=input_)
    assert r.returncode == 0, f"{cmd}: {r.stderr.decode()[-2000:]}"
    return r.stdout.decode()


@pytest.fixture
def docker_env() -> None:
    reason = docker_ready()
    if reason:
        pytest.skip(reason)


def _rootfs_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def registry_node(tmp_path: Path, docker_env: None) -> Iterator[ThreadedNode]:
    n = ThreadedNode(tmp_path / "reg")
    yield n
    n.close()


def _import_image(ref: str, files: dict[str, bytes]) -> None:
    _run("docker", "import", "-", ref, input_=_rootfs_tar(files))


@pytest.mark.docker
def test_docker_push_pull_and_skopeo_both_ways(registry_node: ThreadedNode, tmp_path: Path) -> None:
    reg = f"127.0.0.1:{registry_node.port}"
    ref = f"{reg}/psyduck/test:v1"
    _import_image(ref, {"hello.txt": b"hello pokedex\n", "data.bin": os.urandom(100_000)})
    image_id = _run("docker", "image", "inspect", "-f", "{{.Id}}", ref).strip()
    cleanup = [image_id]
    try:
        _run("docker", "push", ref)
        _run("docker", "rmi", ref)
        _run("docker", "pull", ref)
        assert _run("docker", "image", "inspect", "-f", "{{.Id}}", ref).strip() == image_id
        by_digest = _run("docker", "image", "inspect", "-f", "{{index .RepoDigests 0}}", ref)
        _run("docker", "rmi", ref)
        _run("docker", "pull", by_digest.strip())  # manifests by digest too
        # skopeo: registry -> directory -> (OCI format) registry, and registry -> registry.
        _run(
            "skopeo", "copy", "--src-tls-verify=false", f"docker://{ref}", f"dir:{tmp_path / 'img'}"
        )
        _run(
            "skopeo",
            "copy",
            "--dest-tls-verify=false",
            "--format",
            "oci",
            f"dir:{tmp_path / 'img'}",
            f"docker://{reg}/psyduck/oci:v1",
        )
        _run(
            "skopeo",
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            f"docker://{reg}/psyduck/oci:v1",
            f"docker://{reg}/psyduck/copy:v2",
        )
        inspect = json.loads(
            _run("skopeo", "inspect", "--tls-verify=false", f"docker://{reg}/psyduck/copy:v2")
        )
        assert inspect["Digest"].startswith("sha256:")
        copy = f"{reg}/psyduck/copy:v2"
        _run("docker", "pull", copy)
        cleanup.append(_run("docker", "image", "inspect", "-f", "{{.Id}}", copy).strip())
    finally:
        subprocess.run(["docker", "rmi", "-f", *cleanup], capture_output=True, timeout=120)


@pytest.mark.docker
def test_docker_login_and_push_with_token(tmp_path: Path, docker_env: None) -> None:
    n = ThreadedNode(tmp_path / "reg", token=TOKEN)
    reg = f"127.0.0.1:{n.port}"
    ref = f"{reg}/secure/img:v1"
    env = {**os.environ, "DOCKER_CONFIG": str(tmp_path / "docker-config")}
    try:
        _import_image(ref, {"f": b"secret"})
        r = subprocess.run(
            ["docker", "--config", env["DOCKER_CONFIG"], "push", ref],
            capture_output=True,
            timeout=300,
        )
        assert r.returncode != 0  # no credentials
        _run(
            "docker",
            "--config",
            env["DOCKER_CONFIG"],
            "login",
            "-u",
            "farm",
            "--password-stdin",
            reg,
            input_=TOKEN.encode(),
        )
        _run("docker", "--config", env["DOCKER_CONFIG"], "push", ref)
    finally:
        subprocess.run(["docker", "rmi", "-f", ref], capture_output=True, timeout=120)
        n.close()


def test_oci_manifest_and_index_content_types(tmp_path: Path) -> None:
    """OCI manifests may omit mediaType: the type comes from the shape; indexes reference
    manifests that must exist."""
    oci_manifest = "application/vnd.oci.image.manifest.v1+json"
    oci_index = "application/vnd.oci.image.index.v1+json"

    async def go() -> None:
        async with nodes(tmp_path) as [n], aiohttp.ClientSession() as http:
            base = f"{n.url}/v2/multi/arch"
            config_d = dg.of_bytes(b"{}")
            async with http.post(f"{base}/blobs/uploads/?digest={config_d}", data=b"{}") as r:
                assert r.status == 201  # monolithic POST
            manifest = json.dumps(
                {"schemaVersion": 2, "config": {"digest": config_d}, "layers": []}
            ).encode()
            m_d = dg.of_bytes(manifest)
            index = json.dumps({"schemaVersion": 2, "manifests": [{"digest": m_d}]}).encode()
            async with http.put(f"{base}/manifests/latest", data=index) as r:
                assert r.status == 400  # its manifest is not there yet
            async with http.put(
                f"{base}/manifests/{m_d}", data=manifest, headers={"Content-Type": oci_manifest}
            ) as r:
                assert r.status == 201
            async with http.put(
                f"{base}/manifests/latest", data=index, headers={"Content-Type": oci_index}
            ) as r:
                assert r.status == 201
            async with http.get(f"{base}/manifests/latest") as r:
                assert r.headers["Content-Type"] == oci_index and await r.read() == index
            async with http.head(f"{base}/manifests/{m_d}") as r:
                assert r.headers["Content-Type"] == oci_manifest
            async with http.put(f"{base}/manifests/{dg.of_bytes(b'other')}", data=manifest) as r:
                assert r.status == 400  # digest in the URL must match the body

    asyncio.run(go())
