"""The coordinator's HTTP face answers bad requests with clear 4xx errors and stays up."""

from __future__ import annotations

import asyncio

import aiohttp
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farm.client import FarmClient, FarmError
from farm.coordinator import MAX_BATCH, Run, event_batches
from farm.embedded import start_embedded_farm
from farm.hosts.local import LocalHost
from farm.manifest import RunManifest, TestSpec, WorkerSpec, manifest_to_wire
from farm.protocol import MAX_MESSAGE_BYTES, decode, encode


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def _with_farm(body):
    farm = await start_embedded_farm([LocalHost(1)])
    try:
        async with aiohttp.ClientSession() as http:
            return await body(farm, http)
    finally:
        await farm.close()


def _auth(farm) -> dict[str, str]:
    return {"Authorization": f"Bearer {farm.token}"}


def _manifest(**extra) -> RunManifest:
    return RunManifest(
        tests=(TestSpec(id="t.py::test_a", group="t.py", **extra),),
        worker=WorkerSpec(argv=("pytest_psyduck.workermain",), cwd="/"),
    )


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}]
)
def test_requests_without_the_token_get_401(headers):
    async def body(farm, http):
        for method, path in (
            ("POST", "/v1/runs"),
            ("GET", "/v1/status"),
            ("GET", "/v1/runs/x/events"),
        ):
            async with http.request(method, farm.url + path, headers=headers) as response:
                assert response.status == 401
                assert "token" in decode(await response.read())["message"]
        async with http.get(farm.url + "/v1/health") as response:
            assert response.status == 200

    run(_with_farm(body))


@pytest.mark.parametrize(
    ("payload", "status", "text"),
    [
        (b"\xc1garbage", 400, "malformed msgpack"),
        (msgpack.packb({"v": 0, "t": "run"}), 400, "protocol version mismatch"),
        (encode({"t": "status"}), 400, "expected a 'run' message"),
        (encode({"t": "run", "tests": "nope"}), 400, "'tests' has the wrong type"),
        (
            encode({"t": "run", "tests": [{"id": "a"}], "worker": {"argv": ["m"], "cwd": "/"}}),
            400,
            "missing field 'group'",
        ),
        (
            encode(
                {
                    **manifest_to_wire(_manifest()),
                    "tests": [{"id": "a", "group": "g", "timeout": -1}],
                }
            ),
            400,
            "finite number >= 0",
        ),
    ],
    ids=["garbage", "version", "wrong-type", "bad-tests", "missing-group", "negative-timeout"],
)
def test_malformed_manifests_get_400(payload, status, text):
    async def body(farm, http):
        async with http.post(farm.url + "/v1/runs", data=payload, headers=_auth(farm)) as response:
            assert response.status == status
            assert text in decode(await response.read())["message"]
        async with http.get(farm.url + "/v1/status", headers=_auth(farm)) as response:
            assert response.status == 200  # still serving

    run(_with_farm(body))


def test_oversized_body_gets_413():
    async def body(farm, http):
        async with http.post(
            farm.url + "/v1/runs", data=b"x" * (MAX_MESSAGE_BYTES + 1), headers=_auth(farm)
        ) as response:
            assert response.status == 413

    run(_with_farm(body))


def test_unknown_run_gets_404_and_unplaceable_run_422():
    async def body(farm, http):
        for method, path in (("GET", "/v1/runs/nope/events"), ("POST", "/v1/runs/nope/cancel")):
            async with http.request(method, farm.url + path, headers=_auth(farm)) as response:
                assert response.status == 404
                assert "unknown run 'nope'" in decode(await response.read())["message"]
        wire = manifest_to_wire(_manifest(requires={"cpu": "no-such-flag"}))
        async with http.post(
            farm.url + "/v1/runs", data=encode(wire), headers=_auth(farm)
        ) as response:
            assert response.status == 422
            assert (
                "t.py::test_a requires {'cpu': 'no-such-flag'}"
                in decode(await response.read())["message"]
            )

    run(_with_farm(body))


def test_status_in_json_for_humans():
    async def body(farm, http):
        async with http.get(
            farm.url + "/v1/status", headers={**_auth(farm), "Accept": "application/json"}
        ) as response:
            status = await response.json()
        assert status["hosts"][0]["slots"] == 1
        assert status["hosts"][0]["labels"]["kind"] == "local"

    run(_with_farm(body))


def test_client_explains_refusals_and_unreachable_farms():
    async def body(farm, http):
        async with FarmClient(farm.url, "wrong") as client:
            with pytest.raises(FarmError, match="refused \\(401\\)"):
                await client.status()
        async with FarmClient("http://127.0.0.1:9", farm.token) as client:
            with pytest.raises(FarmError, match="cannot reach the farm"):
                await client.status()
        oversized = RunManifest(
            tests=_manifest().tests,
            worker=WorkerSpec(argv=("m",), cwd="/", env={"BIG": "x" * MAX_MESSAGE_BYTES}),
        )
        async with FarmClient(farm.url, farm.token) as client:
            refusal = r"manifest \(1 tests\) is 67,108,\d+ bytes, over the 67,108,864"
            with pytest.raises(FarmError, match=refusal):
                await client.submit(oversized)
            assert (await client.status())["runs"] == []  # nothing reached the farm

    run(_with_farm(body))


def test_a_run_through_the_real_protocol_and_cancel(tmp_path):
    (tmp_path / "test_x.py").write_text("import time\ndef test_a(): time.sleep(60)\n")

    async def body(farm, http):
        manifest = RunManifest(
            tests=(TestSpec(id="test_x.py::test_a", group="test_x.py"),),
            worker=WorkerSpec(
                argv=("pytest_psyduck.workermain", "-p", "no:cacheprovider"), cwd=str(tmp_path)
            ),
        )
        async with FarmClient(farm.url, farm.token) as client:
            run_id = await client.submit(manifest)
            stream = await client.attach(run_id)
            await asyncio.sleep(0)
            await stream.cancel()
            events = [event async for event in stream]
            assert events[-1]["t"] == "done"
            assert events[-1]["status"] == "cancelled"
            status = await client.status()
            assert status["runs"][0]["status"] == "cancelled"
            assert status["runs"][0]["workers"] == 0

    run(_with_farm(body))


@given(
    st.lists(st.lists(st.integers(0, 10**6), max_size=300), max_size=6),
    st.sampled_from([0.0, 0.005]),
)
@settings(deadline=None, max_examples=40)
def test_event_batches_keep_every_event_in_order_and_end_at_done(bursts, linger):
    """Events arrive in bursts with pauses between; batches never lose, reorder or overfill."""

    async def scenario() -> list[list[dict]]:
        stream = Run("r", _manifest(), owner="me")

        async def produce() -> None:
            for burst in bursts:
                for n in burst:
                    stream.emit({"t": "result", "n": n})
                await asyncio.sleep(0.002)
            stream.emit({"t": "done"})

        producer = asyncio.ensure_future(produce())
        batches = [batch async for batch in event_batches(stream, linger=linger)]
        await producer
        return batches

    batches = run(scenario())
    events = [event for batch in batches for event in batch]
    assert [e["n"] for e in events[:-1]] == [n for burst in bursts for n in burst]
    assert events[-1] == {"t": "done"}
    assert all(0 < len(batch) <= MAX_BATCH for batch in batches)


def test_the_first_event_after_a_quiet_spell_goes_at_once_and_a_busy_stream_batches():
    """With an hour's linger, the first result still leaves at once; those right after wait
    for company (here: until ``done``)."""

    async def scenario() -> tuple[list[dict], list[dict]]:
        stream = Run("r", _manifest(), owner="me")
        batches = event_batches(stream, linger=3600.0)
        stream.emit({"t": "result", "n": 1})
        first = await asyncio.wait_for(anext(batches), 30)
        for event in ({"t": "result", "n": 2}, {"t": "result", "n": 3}, {"t": "done"}):
            stream.emit(event)
        second = await asyncio.wait_for(anext(batches), 30)
        return first, second

    first, second = run(scenario())
    assert first == [{"t": "result", "n": 1}]
    assert second == [{"t": "result", "n": 2}, {"t": "result", "n": 3}, {"t": "done"}]
