"""Named tokens: each run belongs to the name that submitted it; SIGHUP swaps the names.

The parser and the header check are pure and tested as such (with hypothesis);
ownership and reloading are tested on a real ``psyduck farm serve`` with real
workers.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from farm.client import FarmClient, FarmError
from farm.config import ConfigError, load_tokens, parse_config
from farm.manifest import RunManifest, TestSpec, WorkerSpec
from farm.tokens import (
    DEFAULT_NAME,
    Holder,
    Tokens,
    TokensError,
    merge_default,
    parse_tokens,
    without_credentials,
)
from tests.farm_hosts.hostlib import free_port
from tests.served import ServedFarm

ALICE, BOB, CI, SINGLE = "alice-token-0001", "bob-token-00002", "ci-admin-token-3", "single-tok"


def test_a_tokens_file_names_holders_and_admins():
    text = f"# who may use the farm\n\nalice {ALICE}\n  # indented comment\nci\t{CI}   admin\n"
    assert parse_tokens(text, "tokens") == {
        ALICE: Holder("alice"),
        CI: Holder("ci", admin=True),
    }


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (f"alice {ALICE}\nbob\n", "tokens line 2: expected 'NAME TOKEN' or 'NAME TOKEN admin'"),
        (f"alice {ALICE} root\n", "tokens line 1: expected 'NAME TOKEN' or 'NAME TOKEN admin'"),
        (f"alice {ALICE} admin extra\n", "line 1: expected 'NAME TOKEN'"),
        ("alice short\n", "line 1: a token must be at least 8 printable ASCII characters"),
        ("alice tökentöken\n", "line 1: a token must be at least 8 printable ASCII"),
        (f"al/ice {ALICE}\n", "line 1: name 'al/ice' must be 1-64 letters, digits or _.@-"),
        (f"alice {ALICE}\nalice {BOB}\n", "line 2: name 'alice' appears twice"),
        (f"alice {ALICE}\nbob {ALICE}\n", "line 2: 'bob' has the same token as 'alice'"),
    ],
)
def test_malformed_lines_are_named_without_showing_a_token(text, problem):
    with pytest.raises(TokensError) as info:
        parse_tokens(text, "tokens")
    assert problem in str(info.value)
    assert ALICE not in str(info.value) and BOB not in str(info.value)


_names = st.from_regex(r"[A-Za-z0-9_.@-]{1,64}", fullmatch=True)
_tokens = st.from_regex(r"[\x21-\x7e]{8,40}", fullmatch=True).filter(lambda t: t[0] != "#")


@given(st.dictionaries(_names, st.tuples(_tokens, st.booleans()), max_size=8))
def test_every_valid_file_parses_to_what_it_says(entries):
    tokens = [token for token, _ in entries.values()]
    text = "".join(
        f"{name} {token}{' admin' if admin else ''}\n" for name, (token, admin) in entries.items()
    )
    if len(set(tokens)) < len(tokens):
        with pytest.raises(TokensError, match="has the same token as"):
            parse_tokens(text, "f")
        return
    assert parse_tokens(text, "f") == {
        token: Holder(name, admin) for name, (token, admin) in entries.items()
    }


@given(st.text())
def test_parsing_any_text_raises_only_tokens_errors(text):
    try:
        holders = parse_tokens(text, "f")
    except TokensError:
        return
    assert all(isinstance(h, Holder) for h in holders.values())


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        f"Bearer {ALICE}x",
        f"Basic {ALICE}",
        "Bearer",
        "Bearer ",
        f"Bearer {ALICE[:-1]}\udcff",  # what aiohttp makes of a non-UTF-8 byte
        f"Bearer {ALICE[:-1]}é",
    ],
)
def test_headers_that_carry_no_token_belong_to_nobody(header):
    assert Tokens({ALICE: Holder("alice")}).holder(header) is None


def test_a_bearer_header_names_its_holder():
    tokens = Tokens({ALICE: Holder("alice"), CI: Holder("ci", admin=True)})
    assert tokens.holder(f"Bearer {ALICE}") == Holder("alice")
    assert tokens.holder(f"bearer  {CI} ") == Holder("ci", admin=True)
    tokens.replace({BOB: Holder("bob")})
    assert tokens.holder(f"Bearer {ALICE}") is None
    assert tokens.values() == (BOB,)


def test_the_single_token_is_held_by_an_admin_and_conflicts_are_refused():
    merged = merge_default({ALICE: Holder("alice")}, SINGLE)
    assert merged[SINGLE] == Holder(DEFAULT_NAME, admin=True)
    with pytest.raises(TokensError, match="same token as the token_file"):
        merge_default({SINGLE: Holder("alice")}, SINGLE)
    with pytest.raises(TokensError, match="'default' is the token_file's holder"):
        merge_default({ALICE: Holder(DEFAULT_NAME)}, SINGLE)
    with pytest.raises(TokensError, match="never runs open"):
        merge_default({}, None)


def test_credentials_never_pass_the_environment_filter():
    environ = {
        "PSYDUCK_TOKEN": "x",
        "POKEDEX_TOKEN": "y",
        "HOME": "/root",
        "OPERATOR_SECRET": ALICE,
        "CURL_AUTH": f"Authorization: Bearer {ALICE}",
    }
    assert without_credentials(environ, (ALICE,)) == {"HOME": "/root"}
    assert without_credentials(environ) == {
        "HOME": "/root",
        "OPERATOR_SECRET": ALICE,
        "CURL_AUTH": f"Authorization: Bearer {ALICE}",
    }


def test_farm_toml_tokens_file_with_and_without_the_single_token(tmp_path, monkeypatch):
    monkeypatch.delenv("PSYDUCK_TOKEN", raising=False)
    (tmp_path / "tokens").write_text(f"alice {ALICE}\n")
    hosts = [{"url": "local"}]
    named = parse_config({"farm": {"tokens_file": str(tmp_path / "tokens")}, "hosts": hosts})
    assert load_tokens(named, None) == {ALICE: Holder("alice")}
    (tmp_path / "tokens").write_bytes(b"alice \xff\xfe-not-utf8\n")
    with pytest.raises(ConfigError, match=r"tokens_file .*: not UTF-8 text"):
        load_tokens(named, None)
    with pytest.raises(ConfigError, match=r"\[farm\] tokens_file must be a path"):
        parse_config({"farm": {"tokens_file": 3}, "hosts": hosts})


# -- a real served farm ---------------------------------------------------------------------


def _farm(tmp_path: Path, tokens: str) -> ServedFarm:
    port = free_port("127.0.0.1")
    (tmp_path / "tokens").write_text(tokens)
    (tmp_path / "token").write_text(SINGLE)
    config = tmp_path / "farm.toml"
    config.write_text(
        f'[farm]\nlisten = "127.0.0.1:{port}"\ntoken_file = "{tmp_path / "token"}"\n'
        f'tokens_file = "{tmp_path / "tokens"}"\n\n[[hosts]]\nurl = "local"\nslots = 2\n'
    )
    return ServedFarm(config, f"http://127.0.0.1:{port}")


def _sleeper(path: Path) -> RunManifest:
    """A run of one real test that sleeps until it is cancelled."""
    (path / "test_sleep.py").write_text("import time\ndef test_sleep(): time.sleep(600)\n")
    return RunManifest(
        tests=(TestSpec(id="test_sleep.py::test_sleep", group="test_sleep.py"),),
        worker=WorkerSpec(
            argv=("pytest_psyduck.workermain", "-p", "no:cacheprovider"), cwd=str(path)
        ),
        name="sleeper",
    )


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def test_only_the_owner_or_an_admin_may_cancel_or_watch_a_run(tmp_path):
    farm = _farm(tmp_path, f"alice {ALICE}\nbob {BOB}\nci {CI} admin\n")
    manifest = _sleeper(tmp_path)

    async def scenario() -> None:
        async with (
            FarmClient(farm.url, ALICE) as alice,
            FarmClient(farm.url, BOB) as bob,
            FarmClient(farm.url, CI) as ci,
        ):
            first = await alice.submit(manifest)
            for refused in (bob.cancel(first), bob.attach(first)):
                with pytest.raises(FarmError) as info:
                    await refused
                assert "refused (403)" in str(info.value)
                assert f"run {first} belongs to 'alice'; 'bob' may not" in str(info.value)
            owners = {run["id"]: run["owner"] for run in (await bob.status())["runs"]}
            assert owners == {first: "alice"}
            stream = await alice.attach(first)
            await ci.cancel(first)  # an admin may
            events = [event async for event in stream]
            assert events[-1]["status"] == "cancelled", events

            second = await bob.submit(manifest)
            watched = await ci.attach(second)  # an admin may watch anyone's run
            await watched.cancel()
            events = [event async for event in watched]
            assert events[-1]["status"] == "cancelled", events
            await watched.close()

    try:
        _run(scenario())
        shown = subprocess.run(
            [sys.executable, "-m", "farm.cli", "farm", "status", "--farm", farm.url],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PSYDUCK_TOKEN": BOB},
        )
        assert shown.returncode == 0, shown.stderr
        assert "OWNER" in shown.stdout
        assert [line.split()[1] for line in shown.stdout.splitlines() if "sleeper" in line] == [
            "alice",
            "bob",
        ]
    finally:
        farm.stop()


def test_sighup_swaps_the_names_and_keeps_the_last_good_file(tmp_path):
    farm = _farm(tmp_path, f"alice {ALICE}\n")

    async def status(token: str) -> str:
        async with FarmClient(farm.url, token) as client:
            try:
                await client.status()
            except FarmError as exc:
                return str(exc)
            return "ok"

    try:
        assert _run(status(ALICE)) == "ok"
        assert "refused (401)" in _run(status(BOB))
        (tmp_path / "tokens").write_text(f"# alice left\nbob {BOB}\n")
        assert "tokens reloaded: bob, default" in farm.reload("tokens reloaded")
        assert _run(status(BOB)) == "ok"
        assert "refused (401)" in _run(status(ALICE))
        assert _run(status(SINGLE)) == "ok"

        (tmp_path / "tokens").write_text(f"bob {BOB}\ncarol\n")
        kept = farm.reload("kept the previous tokens")
        assert f"tokens_file {tmp_path / 'tokens'} line 2: expected 'NAME TOKEN'" in kept
        assert _run(status(BOB)) == "ok"
    finally:
        farm.stop()
