"""``POST /v1/images/check`` on a real embedded farm: bad requests get a clear 400."""

from __future__ import annotations

import asyncio

import aiohttp
import msgpack
import pytest

from farm.client import FarmClient
from farm.embedded import start_embedded_farm
from farm.hosts.local import LocalHost
from farm.images.check import Expectation, check_request
from farm.protocol import decode, encode


async def _with_farm(body):
    farm = await start_embedded_farm([LocalHost(1)])
    try:
        async with aiohttp.ClientSession() as http:
            return await body(farm, http)
    finally:
        await farm.close()


@pytest.mark.parametrize(
    ("payload", "text"),
    [
        (b"\xc1garbage", "malformed msgpack"),
        (msgpack.packb({"v": 0, "t": "check_image"}), "protocol version mismatch"),
        (encode({"t": "run"}), "expected a 'check_image' message"),
        (encode({**check_request("x", Expectation("3.11", "9")), "image": 7}), "'image' must be"),
        (encode({"t": "check_image", "image": "x", "python": "3.11"}), "'pytest' must be"),
    ],
)
def test_malformed_check_requests_get_400(payload, text):
    async def body(farm, http):
        headers = {"Authorization": f"Bearer {farm.token}"}
        url = farm.url + "/v1/images/check"
        async with http.post(url, data=payload, headers=headers) as response:
            assert response.status == 400
            assert text in decode(await response.read())["message"]

    asyncio.run(asyncio.wait_for(_with_farm(body), 60))


def test_a_farm_without_container_hosts_has_no_image_problems():
    async def body(farm, http):
        async with FarmClient(farm.url, farm.token) as client:
            return await client.check_image(check_request(None, Expectation("3.11", "9.2.0")))

    assert asyncio.run(asyncio.wait_for(_with_farm(body), 60)) == ([], [])
