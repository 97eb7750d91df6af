"""A served farm keeps its credentials to itself and answers hostile input with clear 4xx errors.

Everything here runs against real ``psyduck farm serve`` processes (and, for the
codec, hypothesis): the farm's own pokedex wants a token for reads, no worker
sees a credential of the farm, and bad headers, bodies and ports get one clear
sentence each.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import sys

import aiohttp
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farm.client import FarmClient, FarmError, _refusal
from farm.manifest import parse_manifest
from farm.protocol import MAX_DEPTH, MAX_MESSAGE_BYTES, MSGPACK, ProtocolError, decode, encode
from tests.conftest import on_farm, run_pytest
from tests.farm_hosts.hostlib import free_port
from tests.served import (
    ALICE,
    BOB,
    NO_CREDENTIALS,
    POKEDEX_SECRET,
    SINGLE,
    ServedFarm,
    farm_config,
    get,
    pokedex_table,
)


@pytest.fixture(scope="module")
def farm(tmp_path_factory) -> ServedFarm:
    """A served farm whose single token comes from PSYDUCK_TOKEN, with named tokens too."""
    tmp_path = tmp_path_factory.mktemp("farm")
    port = free_port("127.0.0.1")
    served = ServedFarm(
        farm_config(tmp_path, port), f"http://127.0.0.1:{port}", env={"PSYDUCK_TOKEN": SINGLE}
    )
    yield served
    served.stop()


def _raw_request(url: str, request: bytes) -> tuple[int, bytes]:
    """Send *request* as is (headers no HTTP library would send); (status, body)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(request)
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.parametrize("token", [b"\xff\xfe\xfd", "tökén".encode(), b"single-farm-tok\xc3"])
def test_a_non_utf8_or_odd_authorization_header_is_a_401(farm, token):
    status, body = _raw_request(
        farm.url,
        b"GET /v1/status HTTP/1.1\r\nHost: farm\r\nAuthorization: Bearer "
        + token
        + b"\r\nConnection: close\r\n\r\n",
    )
    assert status == 401
    assert "missing or wrong token" in decode(body)["message"]


def _post(farm: ServedFarm, body: bytes, content_type: str = MSGPACK, accept: str = MSGPACK):
    async def post() -> tuple[int, bytes, str]:
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                farm.url + "/v1/runs",
                data=body,
                headers={
                    "Authorization": f"Bearer {ALICE}",
                    "Content-Type": content_type,
                    "Accept": accept,
                },
                timeout=aiohttp.ClientTimeout(total=120),
            ) as response,
        ):
            return response.status, await response.read(), response.content_type

    return asyncio.run(post())


def test_deeply_nested_msgpack_is_a_400_naming_the_problem(farm):
    header = b"\x83" + b"".join(msgpack.packb(x) for x in ("v", 1, "t", "run", "tests"))
    status, body, _ = _post(farm, header + b"\x91" * 100_000 + b"\xc0")
    assert status == 400
    assert decode(body)["message"] == f"malformed msgpack: nested more than {MAX_DEPTH} levels deep"


def test_a_json_body_is_a_400_that_says_so(farm):
    manifest = json.dumps({"t": "run", "tests": []}).encode()
    status, body, _ = _post(farm, manifest, content_type="application/json")
    assert (status, decode(body)["message"]) == (
        400,
        f"expected a msgpack body (Content-Type {MSGPACK}), got JSON",
    )
    status, body, _ = _post(farm, manifest)
    assert status == 400
    assert "got what looks like JSON" in decode(body)["message"]


@pytest.mark.parametrize("accept", [MSGPACK, "application/json"])
def test_an_oversized_body_is_a_413_error_body_with_the_limit(farm, accept):
    status, body, content_type = _post(farm, b"\x00" * (MAX_MESSAGE_BYTES + 1), accept=accept)
    assert status == 413
    message = json.loads(body) if accept == "application/json" else decode(body)
    assert content_type == accept
    assert message["message"] == (
        f"request body over the farm's limit of {MAX_MESSAGE_BYTES} bytes"
    )


def test_the_client_explains_refusals(farm):
    async def wrong_token() -> str:
        async with FarmClient(farm.url, "not-a-token") as client:
            with pytest.raises(FarmError) as info:
                await client.status()
            return str(info.value)

    text = asyncio.run(wrong_token())
    assert f"the farm at {farm.url} refused (401): missing or wrong token" in text
    assert "PSYDUCK_TOKEN" in text
    proxy = _refusal("http://farm", 502, b"<h1>502 Bad Gateway</h1>\n")
    assert str(proxy) == "the farm at http://farm refused (502): <h1>502 Bad Gateway</h1>"
    assert "(the body was empty)" in str(_refusal("http://farm", 503, b""))


def test_no_credential_reaches_a_worker_of_a_served_farm(tmp_path, suite):
    """PSYDUCK_TOKEN, POKEDEX_TOKEN and any variable holding a farm token stay with the farm;
    a named user ships a snapshot to the farm's pokedex, whose reads need a token, and the
    local host pulls it."""
    port, pokedex_port = free_port("127.0.0.1"), free_port("127.0.0.1")
    config = farm_config(
        tmp_path,
        port,
        pokedex=pokedex_table(tmp_path, pokedex_port),
    )
    served = ServedFarm(
        config,
        f"http://127.0.0.1:{port}",
        env={
            "PSYDUCK_TOKEN": SINGLE,
            "POKEDEX_TOKEN": POKEDEX_SECRET,
            "OPERATOR_NOTE": f"alice uses {ALICE}",
            "XDG_CACHE_HOME": str(tmp_path / "cache"),
        },
    )
    try:
        node = f"http://127.0.0.1:{pokedex_port}"
        assert get(node + "/refs?prefix=")[0] == 401
        assert get(node + "/v2/_catalog")[0] == 401
        assert get(node + "/refs?prefix=", {"Authorization": f"Bearer {BOB}"})[0] == 200
        docker_login = base64.b64encode(f"anyone:{SINGLE}".encode()).decode()
        assert get(node + "/v2/_catalog", {"Authorization": f"Basic {docker_login}"})[0] == 200
        project = suite({"proj/test_env.py": NO_CREDENTIALS}) / "proj"
        result = run_pytest(project, *on_farm(served.url), env={"PSYDUCK_TOKEN": BOB})
        assert result.outcomes() == {"passed": 1}, result.stdout + result.stderr
        assert "shipped" in result.stdout + result.stderr
    finally:
        served.stop()


@pytest.mark.parametrize("spawn", ["fork", "exec"])
def test_no_credential_of_the_user_reaches_an_embedded_farms_worker(suite, spawn):
    path = suite({"test_env.py": NO_CREDENTIALS})
    result = run_pytest(
        path,
        "-p",
        "no:cacheprovider",
        "--psyduck",
        "--psyduck-hosts=local:1",
        f"--psyduck-spawn={spawn}",
        env={"PSYDUCK_TOKEN": SINGLE, "POKEDEX_TOKEN": POKEDEX_SECRET},
    )
    assert result.outcomes() == {"passed": 1}, result.stdout + result.stderr


def test_anonymous_reads_is_the_operators_choice(tmp_path):
    port, pokedex_port = free_port("127.0.0.1"), free_port("127.0.0.1")
    config = farm_config(
        tmp_path,
        port,
        pokedex=pokedex_table(tmp_path, pokedex_port) + "anonymous_reads = true\n",
    )
    served = ServedFarm(config, f"http://127.0.0.1:{port}")
    try:
        node = f"http://127.0.0.1:{pokedex_port}"
        assert get(node + "/refs?prefix=")[0] == 200
        status, body, _ = get(node + "/refs/x", {"Authorization": "Bearer wrong"})
        assert status in (200, 404), body  # reads never look at the token
        assert _put_ref(node, None) == 401  # writes still need one
        assert _put_ref(node, ALICE) != 401
    finally:
        served.stop()


def _put_ref(node: str, token: str | None) -> int:
    import urllib.error
    import urllib.request

    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        node + "/refs/probe",
        data=json.dumps({"digest": None, "expected": None}).encode(),
        headers=headers,
        method="PUT",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_listen_on_the_command_line_keeps_the_rest_of_the_config(tmp_path):
    port, other, pokedex_port = (free_port("127.0.0.1") for _ in range(3))
    config = farm_config(
        tmp_path,
        port,
        pokedex=pokedex_table(tmp_path, pokedex_port),
    )
    served = ServedFarm(
        config, f"http://127.0.0.1:{other}", args=("--listen", f"127.0.0.1:{other}")
    )
    try:
        status, body, _ = get(served.url + "/v1/info", {"Authorization": f"Bearer {ALICE}"})
        assert status == 200
        assert decode(body)["pokedex"] == [f"http://127.0.0.1:{pokedex_port}"]
    finally:
        served.stop()


@pytest.mark.parametrize("which", ["farm", "pokedex"])
def test_a_port_in_use_is_one_clear_line_and_a_nonzero_exit(tmp_path, which):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        busy = taken.getsockname()[1]
        port = busy if which == "farm" else free_port("127.0.0.1")
        pokedex = pokedex_table(tmp_path, busy) if which == "pokedex" else ""
        config = farm_config(tmp_path, port, pokedex=pokedex)
        done = subprocess.run(
            [sys.executable, "-m", "farm.cli", "farm", "serve", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PSYDUCK_TOKEN": SINGLE},
        )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    where = "[farm] listen" if which == "farm" else "[pokedex]"
    assert line.startswith(f"psyduck: {where}: cannot ")
    assert line.endswith(f"127.0.0.1:{busy}: address already in use")


# -- the codec, on anything ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\xc1", "malformed msgpack: a byte that starts no msgpack value"),
        (b"\x82\xa1v\x01", "malformed msgpack: the message is truncated"),
        (b"\xa2\xff\xfe", "malformed msgpack: a string is not valid UTF-8 (invalid start byte)"),
        (encode({"t": "x"}) + b"\x01\x02", "malformed msgpack: 2 byte(s) after the end"),
        (b"\x91" * 2000 + b"\x01", f"malformed msgpack: nested more than {MAX_DEPTH} levels"),
        (b'  {"t": "run"}\n', "got what looks like JSON"),
        (b"[1, 2]", "got what looks like JSON"),
    ],
)
def test_every_malformed_message_says_what_is_wrong(data, problem):
    with pytest.raises(ProtocolError) as info:
        decode(data)
    assert problem in str(info.value)
    assert not str(info.value).rstrip().endswith(":")


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8)
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=30,
)


@given(st.binary(max_size=512))
def test_decoding_any_bytes_raises_only_protocol_errors(data):
    try:
        message = decode(data)
    except ProtocolError:
        return
    assert isinstance(message, dict) and isinstance(message["t"], str)


@given(_values, st.integers(0, 3000))
def test_decoding_any_structure_at_any_depth_raises_only_protocol_errors(value, depth):
    body = b"\x83" + b"".join(msgpack.packb(x) for x in ("v", 1, "t", "run", "x"))
    data = body + b"\x91" * depth + msgpack.packb(value)
    try:
        decode(data)
    except ProtocolError:
        pass


def _maybe(good):
    return good | _values


_test = st.fixed_dictionaries(
    {"id": _maybe(st.text(min_size=1, max_size=5)), "group": _maybe(st.text(max_size=3))},
    optional={
        key: _values for key in ("estimate", "timeout", "requires", "cpus", "memory", "profile")
    },
)
_worker = st.fixed_dictionaries(
    {
        "argv": _maybe(st.lists(st.text(max_size=3), min_size=1, max_size=3)),
        "cwd": _maybe(st.text(max_size=3)),
    },
    optional={
        "env": _maybe(st.dictionaries(st.text(max_size=3), st.text(max_size=3))),
        "root": _values,
    },
)
_manifest = st.fixed_dictionaries(
    {"tests": _maybe(st.lists(_maybe(_test), min_size=1, max_size=4)), "worker": _maybe(_worker)},
    optional={key: _values for key in ("name", "image", "snapshot", "network", "profiles")},
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_manifest | _values)
def test_parsing_any_decoded_structure_raises_only_protocol_errors(data):
    try:
        parse_manifest(data)
    except ProtocolError:
        pass


def test_a_manifest_nested_as_deep_as_msgpack_allows_is_refused_clearly():
    deep: object = "x"
    for _ in range(MAX_DEPTH - 4):
        deep = [deep]
    for field in ("tests", "worker", "profiles", "name"):
        message = {
            "t": "run",
            "tests": [{"id": "a", "group": "g"}],
            "worker": {"argv": ["m"], "cwd": "/"},
        }
        message[field] = deep
        with pytest.raises(ProtocolError, match=r"wrong type|must"):
            parse_manifest(message)
