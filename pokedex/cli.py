"""The ``pokedex`` command: run a node, or talk to a cluster.

    pokedex serve --data DIR --listen HOST:PORT [--peers URL,URL...] [--replicas R]
                  [--token-file F] [--auth-reads] [--repair-interval S]
                  [--max-bytes SIZE] [--keep-recent DURATION] [--gc-grace DURATION]
                  [--tombstone-grace DURATION]
    pokedex put FILE [--min-copies N]    -> prints the digest
    pokedex get DIGEST -o FILE
    pokedex push-tree DIR [--hash-cache F] [--min-copies N]  -> prints the tree digest
    pokedex pull-tree DIGEST DIR [--cache DIR] [--swarm HOST] [--link]
    pokedex status                       -> JSON: nodes, bytes, blobs, replication health
    pokedex repair
    pokedex gc [--keep SIZE] [--json]   -> evict unprotected blobs now; prints what was freed

Client commands find the cluster with ``--url`` (repeatable or comma-separated) or
``$POKEDEX_URL``, and the token with ``--token-file`` or ``$POKEDEX_TOKEN``.

Exit status: 0 done; 1 failed (one line on stderr says why); 2 bad usage; 3 (``put``,
``push-tree``) stored, but some blob has fewer copies than the cluster's replica count
because nodes were down: a warning names the copies made and wanted, and a repair pass
adds the rest once the nodes are back. ``--min-copies N`` turns fewer than N copies into
a failure (status 1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import units
from .client import PokedexError
from .refquorum import TOMBSTONE_GRACE
from .retention import DEFAULT_GRACE, DEFAULT_KEEP_RECENT, Policy
from .starting import start_node
from .syncclient import SyncClient

EXIT_UNDER_REPLICATED = 3


def _token(path: str | None) -> str | None:
    if path:
        return Path(path).read_text().strip() or None
    return os.environ.get("POKEDEX_TOKEN") or None


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"want HOST:PORT, not {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _argument(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type from a parser raising ValueError (so the message reaches the user)."""

    def convert(value: str) -> Any:
        try:
            return parse(value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return convert


def format_gc(answer: dict[str, Any]) -> str:
    """One line per node of a ``POST /gc`` answer: what was freed, what is left."""
    lines = []
    for r in answer["nodes"]:
        if r.get("skipped"):
            lines.append(f"{r['node']}: skipped: {r['skipped']}")
            continue
        budget = (
            "no budget" if r["max_bytes"] is None else f"budget {units.format_size(r['max_bytes'])}"
        )
        lines.append(
            f"{r['node']}: freed {units.format_size(r['freed'])} in {r['evicted']} blobs; "
            f"{units.format_size(r['bytes'])} left ({budget})"
        )
    return "\n".join(lines)


async def _serve(args: argparse.Namespace) -> None:
    host, port = args.listen
    peers = [p for item in args.peers for p in item.split(",") if p.strip()]
    node = await start_node(
        args.data,
        host,
        port,
        peers=peers,
        replicas=args.replicas,
        token=_token(args.token_file),
        auth_reads=args.auth_reads,
        repair_interval=args.repair_interval or None,
        advertise=args.advertise,
        gc_policy=Policy(args.max_bytes, args.gc_grace, args.keep_recent),
        tombstone_grace=args.tombstone_grace,
    )
    print(f"pokedex listening on {node.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await node.close()


def under_replicated_warning(short: dict[str, tuple[int, int]]) -> str | None:
    """The warning for blobs stored with fewer copies than wanted (digest -> (copies,
    wanted)), or None if there are none."""
    if not short:
        return None
    copies, wanted = min(short.values())
    if len(short) == 1:
        what = f"{next(iter(short))} was stored with only {copies} of {wanted} copies"
    else:
        what = (
            f"{len(short)} blobs were stored with fewer copies than wanted "
            f"(fewest: {copies} of {wanted})"
        )
    return (
        f"pokedex: warning: {what}; nodes are down or unreachable, and a repair pass "
        "(`pokedex repair`, or the nodes' repair loop) adds the missing copies once they are back"
    )


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"want a whole number of at least 1, not {value!r}")
    return int(value)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pokedex", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run one node")
    s.add_argument("--data", required=True, help="data directory")
    s.add_argument("--listen", type=_host_port, default=("127.0.0.1", 7480), help="HOST:PORT")
    s.add_argument("--peers", action="append", default=[], help="other nodes' URLs")
    s.add_argument("--replicas", type=int, default=2)
    s.add_argument("--token-file")
    s.add_argument("--auth-reads", action="store_true", help="reads need the token too")
    s.add_argument("--repair-interval", type=float, default=60.0, help="seconds; 0 = off")
    s.add_argument("--advertise", help="URL peers know this node by")
    s.add_argument(
        "--tombstone-grace",
        type=_argument(units.parse_duration),
        default=TOMBSTONE_GRACE,
        help="keep a deleted ref's tombstone this long before a repair pass prunes it "
        "(e.g. 30m; default 1h)",
    )
    s.add_argument(
        "--max-bytes",
        type=_argument(units.parse_size),
        help="disk budget for blobs (e.g. 500M, 10G): past it, evict unprotected blobs",
    )
    s.add_argument(
        "--keep-recent",
        type=_argument(units.parse_duration),
        default=DEFAULT_KEEP_RECENT,
        help="keep trees pushed or pulled within this long (e.g. 24h; default 24h)",
    )
    s.add_argument(
        "--gc-grace",
        type=_argument(units.parse_duration),
        default=DEFAULT_GRACE,
        help="never evict a blob used within this long (default 1h)",
    )

    def client_cmd(name: str, help_: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_)
        c.add_argument("--url", action="append", default=[], help="node URL(s)")
        c.add_argument("--token-file")
        return c

    min_copies_help = "fail (status 1) if fewer than N copies of a blob could be made"
    pu = client_cmd("put", "store a file, print its digest")
    pu.add_argument("file")
    pu.add_argument("--min-copies", type=_positive, default=1, metavar="N", help=min_copies_help)
    g = client_cmd("get", "fetch a blob into a file")
    g.add_argument("digest")
    g.add_argument("-o", "--output", required=True)
    pt = client_cmd("push-tree", "store a directory, print its digest")
    pt.add_argument("dir")
    pt.add_argument("--hash-cache", help="file remembering digests of unchanged files")
    pt.add_argument("--min-copies", type=_positive, default=1, metavar="N", help=min_copies_help)
    t = client_cmd("pull-tree", "materialize a stored directory")
    t.add_argument("digest")
    t.add_argument("dir")
    t.add_argument("--cache", default=os.path.expanduser("~/.cache/pokedex"))
    t.add_argument("--swarm", metavar="HOST", help="fetch from peers too, serving on HOST")
    t.add_argument("--link", action="store_true", help="hard-link files from the cache")
    client_cmd("status", "cluster health as JSON")
    client_cmd("repair", "run a repair pass on the given nodes")
    gc = client_cmd("gc", "evict unprotected blobs on every node now")
    gc.add_argument(
        "--keep",
        type=_argument(units.parse_size),
        default=0,
        help="stop once a node holds this much (default: evict all that may go)",
    )
    gc.add_argument("--json", action="store_true", help="print the answer as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.command == "serve":
        asyncio.run(_serve(args))
        return 0
    urls = [u for item in args.url for u in item.split(",")] or os.environ.get(
        "POKEDEX_URL", ""
    ).split(",")
    if not any(u.strip() for u in urls):
        print("pokedex: give --url or set POKEDEX_URL", file=sys.stderr)
        return 2
    min_copies = getattr(args, "min_copies", 1)
    try:
        with SyncClient(urls, _token(args.token_file), min_copies=min_copies) as c:
            if args.command == "put":
                print(c.put_file(args.file))
            elif args.command == "get":
                c.get_file(args.digest, args.output)
            elif args.command == "push-tree":
                print(c.push_tree(args.dir, hash_cache=args.hash_cache))
            elif args.command == "pull-tree":
                c.pull_tree(
                    args.digest, args.dir, args.cache, swarm_peer=args.swarm, link=args.link
                )
            elif args.command == "status":
                print(json.dumps(c.status(), indent=2))
            elif args.command == "repair":
                print(json.dumps(c.repair(), indent=2))
            elif args.command == "gc":
                answer = c.gc(args.keep)
                print(json.dumps(answer, indent=2) if args.json else format_gc(answer))
                if any(r.get("skipped") for r in answer["nodes"]):
                    return 1
            warning = under_replicated_warning(c.under_replicated)
    except (PokedexError, ValueError, OSError) as e:
        print(f"pokedex: {e}", file=sys.stderr)
        return 1
    if warning is not None:
        print(warning, file=sys.stderr)
        return EXIT_UNDER_REPLICATED
    return 0


if __name__ == "__main__":
    sys.exit(main())
