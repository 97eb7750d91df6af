"""The ``psyduck`` command: run a farm, look at it, check its hosts.

* ``psyduck farm serve --config farm.toml`` — the coordinator as a long-lived service
  (SIGHUP rereads its ``tokens_file``; no credential of it reaches a worker);
* ``psyduck farm status`` — hosts, slots in use, runs (with their owners) and queued tests,
  and the slowest tests of the farm's duration history;
* ``psyduck hosts check`` — reach each host and say what is wrong with it;
* ``psyduck image build`` — build (or reuse) the project's test image;
* ``psyduck simulate`` — the real scheduler over simulated hosts, in virtual time.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import secrets
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from farm.client import FarmClient, FarmError
from farm.config import (
    ConfigError,
    FarmConfig,
    build_host,
    load_config,
    load_tokens,
    parse_listen,
    read_token,
    single_token,
)
from farm.coordinator import Coordinator
from farm.history import History, HistoryError
from farm.hosts import HostSpecError, parse_hosts
from farm.hosts.base import Host, HostError
from farm.images.build import add_build_arguments
from farm.images.check import check_context, local_expectation
from farm.service import make_app
from farm.tokens import Tokens, scrub


def listening_socket(address: tuple[str, int], what: str) -> socket.socket:
    """A socket bound to *address*; ConfigError in one line when it cannot be."""
    host, port = address
    try:
        return socket.create_server(
            (host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET, backlog=1024
        )
    except OSError as exc:
        shown = f"[{host}]" if ":" in host else host
        raise ConfigError(f"{what}: cannot listen on {shown}:{port}: {_reason(exc)}") from exc


def _reason(exc: OSError) -> str:
    """What went wrong, in the words of ``strerror`` (without what Python appended)."""
    return os.strerror(exc.errno).lower() if exc.errno else str(exc)


async def serve(config: FarmConfig, tokens: Tokens, single: str | None) -> None:
    """Serve until SIGINT or SIGTERM; SIGHUP rereads the ``tokens_file``.

    The farm's port is bound before any host starts, so a port in use is one
    clear error, not a farm that started its hosts for nothing.
    """
    sock = listening_socket(config.listen, "[farm] listen")
    # From here on, a signal during start-up is not lost (nor does SIGHUP kill the farm).
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_tokens, config, tokens, single)
    try:
        await _serve_on(sock, config, tokens, stop, single)
    finally:
        sock.close()


async def _serve_on(
    sock: socket.socket,
    config: FarmConfig,
    tokens: Tokens,
    stop: asyncio.Event,
    single: str | None,
) -> None:
    hosts = [build_host(h) for h in config.hosts]
    node = None
    pokedex_urls: tuple[str, ...] = ()
    pokedex_token: str | None = None
    if config.pokedex is not None and config.pokedex.data:
        import pokedex

        # The farm's own reads use a token of their own, which no user holds;
        # users push and read with their farm tokens.
        pokedex_token = secrets.token_urlsafe(32)
        host, port = config.pokedex.listen
        try:
            node = await pokedex.start_node(
                config.pokedex.data,
                host,
                port,
                replicas=1,
                token=pokedex_token,
                auth_reads=not config.pokedex.anonymous_reads,
                more_tokens=tokens.values,
                gc_policy=pokedex.Policy(max_bytes=config.pokedex.max_bytes),
            )
        except OSError as exc:
            raise ConfigError(
                f"[pokedex]: cannot serve {config.pokedex.data} on {host}:{port}: {_reason(exc)}"
            ) from exc
        pokedex_urls = (node.url,)
        print(f"pokedex node serving on {node.url}", flush=True)
    elif config.pokedex is not None:
        pokedex_urls = config.pokedex.urls
        pokedex_token = (
            read_token(config.pokedex.token_file) if config.pokedex.token_file else single
        )
    history = open_history(config)
    spool = Path(config.state_dir) / "spool"
    try:
        spool.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"[farm] state_dir: cannot create {spool}: {_reason(exc)}") from exc
    coordinator = Coordinator(
        hosts,
        pokedex_urls=pokedex_urls,
        pokedex_token=pokedex_token,
        history=history,
        spool_dir=str(spool),
        spool_max_bytes=config.spool_max_bytes,
    )
    await coordinator.start()
    runner = web.AppRunner(
        make_app(coordinator, tokens, heartbeat=config.heartbeat), access_log=None
    )
    await runner.setup()
    await web.SockSite(runner, sock, backlog=1024).start()
    host, port = sock.getsockname()[:2]
    slots = sum(h.slots for h in hosts)
    print(
        f"psyduck farm serving on http://{host}:{port} with {len(hosts)} host(s), {slots} slot(s)",
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        await coordinator.close()
        await runner.cleanup()
        if node is not None:
            await node.close()
        if history is not None:
            await asyncio.to_thread(history.close)


def open_history(config: FarmConfig) -> History | None:
    """The farm's duration history, or None (with a warning) when its file cannot be used:
    the farm serves without it rather than not at all."""
    settings = config.history
    if settings.path is None:
        print("duration history: off ([history] enabled = false)", flush=True)
        return None
    try:
        history = History(settings.path, settings.keep, settings.max_age_days)
    except HistoryError as exc:
        print(
            f"psyduck farm: WARNING: duration history disabled: {exc}", file=sys.stderr, flush=True
        )
        return None
    print(
        f"duration history: {history.path} (last {history.keep} per test, "
        f"dropped after {history.max_age_days:g} days unseen)",
        flush=True,
    )
    return history


def reload_tokens(config: FarmConfig, tokens: Tokens, single: str | None) -> None:
    """Reread the ``tokens_file``; keep the tokens in force if it cannot be used."""
    if not config.tokens_file:
        print("psyduck farm: SIGHUP ignored: there is no [farm] tokens_file", flush=True)
        return
    try:
        holders = load_tokens(config, single)
    except ConfigError as exc:
        print(f"psyduck farm: kept the previous tokens: {exc}", file=sys.stderr, flush=True)
        return
    tokens.replace(holders)
    scrub(os.environ, tokens.values())
    print(f"psyduck farm: tokens reloaded: {', '.join(tokens.names())}", flush=True)


async def status(url: str, token: str) -> dict[str, Any]:
    async with FarmClient(url, token) as client:
        return await client.status()


def format_status(report: dict[str, Any]) -> str:
    lines = ["HOST                      SLOTS  BUSY  STATE"]
    for host in report["hosts"]:
        state = f"quarantined: {host['problem']}" if host["quarantined"] else "ok"
        if host["failures"] and not host["quarantined"]:
            state += f" ({host['failures']} recent failures)"
        lines.append(f"{host['name']:<25} {host['slots']:>5}  {host['busy']:>4}  {state}")
    lines.append("")
    lines.append("RUN               OWNER       STATUS     DONE/TESTS  QUEUED  WORKERS  NAME")
    for run in report["runs"]:
        state = "held back" if run.get("held_back") else run["status"]  # its client lags
        lines.append(
            f"{run['id']:<17} {run['owner']:<11} {state:<10} "
            f"{run['done']:>5}/{run['tests']:<5} {run['queued']:>6}  {run['workers']:>7}  "
            f"{run['name']}"
        )
    if not report["runs"]:
        lines.append("(no runs)")
    lines.append("")
    if "history_problem" in report:
        lines.append(f"duration history: {report['history_problem']}")
    elif "slowest" in report:
        lines.append("SLOWEST TESTS (farm history)      MEDIAN  RUNS  PROJECT")
        for test in report["slowest"]:
            lines.append(
                f"{test['test']:<32} {test['estimate']:>8.2f}s {test['runs']:>4}  {test['project']}"
            )
        if not report["slowest"]:
            lines.append("(no durations recorded yet)")
    else:
        lines.append("duration history: off")
    return "\n".join(lines)


async def check_hosts(hosts: list[Host], image: str | None) -> list[dict[str, Any]]:
    async def one(host: Host) -> dict[str, Any]:
        try:
            await asyncio.wait_for(host.start(), 30)
            wanted = image or getattr(host, "image", None)  # else the host's own (farm.toml)
            result = await asyncio.wait_for(host.check(wanted), 30)
            if wanted and not result.get("problem") and hasattr(host, "image_verdict"):
                verdict = await host.image_verdict(wanted, local_expectation(), check_context())
                problem = verdict.problem
                result["image_usable"] = problem is None
                if problem:
                    result["problem"] = problem
                if verdict.notes:
                    result["image_notes"] = "; ".join(verdict.notes)
            return result
        except Exception as exc:  # report every failure as a finding, never a traceback
            return {
                **host.describe(),
                "reachable": False,
                "problem": f"{type(exc).__name__}: {exc}",
            }
        finally:
            await host.close()

    return list(await asyncio.gather(*(one(h) for h in hosts)))


def format_checks(results: list[dict[str, Any]]) -> str:
    lines = []
    for result in results:
        ok = result.get("reachable") and not result.get("problem")
        lines.append(f"{result['name']}: {'ok' if ok else 'PROBLEM'}")
        for key, value in result.items():
            if key in ("name", "reachable"):
                continue
            if key == "labels":
                value = ", ".join(
                    f"{k}={v if len(v) < 40 else v[:37] + '...'}" for k, v in value.items()
                )
            lines.append(f"  {key}: {value}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="psyduck", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    farm = commands.add_parser("farm", help="run or inspect a farm").add_subparsers(
        dest="action", required=True
    )
    serve_cmd = farm.add_parser("serve", help="run the coordinator service")
    serve_cmd.add_argument("--config", required=True, help="farm.toml")
    serve_cmd.add_argument("--listen", help="HOST:PORT (overrides [farm] listen)")
    status_cmd = farm.add_parser("status", help="hosts, slots in use, runs and queued tests")
    status_cmd.add_argument(
        "--farm", default=os.environ.get("PSYDUCK_FARM"), help="coordinator URL (env PSYDUCK_FARM)"
    )
    status_cmd.add_argument("--token-file", help="file holding the token (else env PSYDUCK_TOKEN)")
    status_cmd.add_argument("--json", action="store_true", help="print JSON")

    hosts = commands.add_parser("hosts", help="inspect hosts").add_subparsers(
        dest="action", required=True
    )
    check = hosts.add_parser("check", help="reach each host and report what is wrong")
    source = check.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="farm.toml")
    source.add_argument("--hosts", help="host list, as for --psyduck-hosts")
    check.add_argument(
        "--image",
        help="report whether this image is on each host and can run psyduck's workers "
        "(Python and pytest of this interpreter's versions)",
    )
    check.add_argument("--json", action="store_true", help="print JSON")

    image = commands.add_parser("image", help="test images").add_subparsers(
        dest="action", required=True
    )
    build = image.add_parser(
        "build", help="build (or reuse) the project's test image; prints its tag last"
    )
    add_build_arguments(build)
    build.add_argument("--push", metavar="URL", help="store the image in this pokedex node")
    build.add_argument("--token-file", help="pokedex token for --push (else env PSYDUCK_TOKEN)")
    _simulate_arguments(
        commands.add_parser(
            "simulate", help="the farm's scheduler over simulated hosts, without sleeping"
        )
    )
    return parser


def _simulate_arguments(sim: argparse.ArgumentParser) -> None:
    from farm.simulation.workload import Options, parse_size

    def size(text: str) -> int:
        try:
            return parse_size(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    d = Options()
    add = sim.add_argument
    add("--hosts", type=int, default=d.hosts, help="hosts (default %(default)s)")
    add("--slots", type=int, default=d.slots, help="slots per host (default %(default)s)")
    add("--cpus", type=float, default=d.cpus, help="CPUs per host (default %(default)s)")
    add("--memory", type=size, default=d.memory, help="memory per host, e.g. 64G (default 16G)")
    add("--tests", type=int, default=d.tests, help="test functions (default %(default)s)")
    add("--variants", type=int, default=d.variants, help="variants of each (default %(default)s)")
    add("--noise", type=float, default=d.noise, help="lognormal sigma of estimates' error")
    add("--heavy", type=float, default=d.heavy, help="fraction of tests asking for resources")
    add("--heavy-cpus", type=float, default=d.heavy_cpus, help="CPUs a heavy test asks for")
    add("--heavy-memory", type=size, default=d.heavy_memory, help="memory a heavy test asks for")
    add("--long", type=float, default=d.long, help="fraction of tests lasting 1-2 hours")
    add("--small-run", type=int, default=d.small_run, help="tests of a run arriving mid-way")
    add("--small-variants", type=int, default=d.small_variants, help="variants of each (1)")
    add("--unknown", type=float, default=d.unknown, help="fraction of tests never timed")
    add("--host-failures", type=int, default=d.host_failures, help="hosts lost during the run")
    add("--min-shard-seconds", type=float, default=d.min_shard_seconds, help="hosts' minimum")
    add("--seed", type=int, default=d.seed, help="random seed (default %(default)s)")
    add("--json", action="store_true", help="print one JSON object (the last line)")
    add("--gantt", metavar="FILE.svg", help="draw the first slots over time as SVG")


def simulate_command(args: argparse.Namespace) -> int:
    """``psyduck simulate``: figures on stdout (JSON on its last line with ``--json``)."""
    from farm.simulation.report import gantt_svg, simulate, summary
    from farm.simulation.workload import Options

    names = [f.name for f in dataclasses.fields(Options)]
    options = Options(**{name: getattr(args, name) for name in names})
    try:
        result, outcome = simulate(options, gantt=bool(args.gantt))
    except ValueError as exc:
        print(f"psyduck simulate: {exc}", file=sys.stderr)
        return 2
    if args.gantt:
        title = f"{options.hosts} hosts x {options.slots} slots, {result['tests']} tests"
        with open(args.gantt, "w", encoding="utf-8") as out:
            out.write(gantt_svg(outcome, title))
    print(json.dumps(result) if args.json else summary(result))
    return 0


def build_image(args: argparse.Namespace) -> int:
    """``psyduck image build``: progress on stderr, the tag on stdout's last line."""
    from farm.images.build import BuildError, build_from_arguments, push_image

    def progress(line: str) -> None:
        print(f"psyduck image: {line}", file=sys.stderr, flush=True)

    try:
        built = build_from_arguments(args, progress)
        if args.push:
            push_image(built.tag, args.push, read_token(args.token_file), progress, args.host)
    except BuildError as exc:
        print(f"psyduck image build: {exc}", file=sys.stderr)
        return 1
    print(built.tag)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "farm" and args.action == "serve":
            config = load_config(args.config)
            if args.listen:
                config = dataclasses.replace(config, listen=parse_listen(args.listen))
            single = single_token(config)
            tokens = Tokens(load_tokens(config, single))
            scrub(os.environ, tokens.values())
            asyncio.run(serve(config, tokens, single))
            return 0
        if args.command == "farm" and args.action == "status":
            if not args.farm:
                raise ConfigError("no farm: pass --farm URL or set PSYDUCK_FARM")
            report = asyncio.run(status(args.farm, read_token(args.token_file)))
            print(json.dumps(report, indent=2) if args.json else format_status(report))
            return 0
        if args.command == "image":
            return build_image(args)
        if args.command == "simulate":
            return simulate_command(args)
        hosts = (
            [build_host(h) for h in load_config(args.config).hosts]
            if args.config
            else parse_hosts(args.hosts)
        )
        results = asyncio.run(check_hosts(hosts, args.image))
        print(json.dumps(results, indent=2, default=str) if args.json else format_checks(results))
        return 0 if all(r.get("reachable") and not r.get("problem") for r in results) else 1
    except (ConfigError, HostSpecError, HostError, FarmError) as exc:
        print(f"psyduck: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
