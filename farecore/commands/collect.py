"""``farecore collect``: serve a collection point directory to the gates over HTTP(S)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from farecore.commands._args import count, path
from farecore.commands.journal import parse_utc_offset
from farecore.errors import ConfigError
from farecore.fleet.collect import (
    DEFAULT_MAX_INCOMING_BYTES,
    DEFAULT_PARTIAL_TTL_S,
    CollectionPoint,
)
from farecore.fleet.collect_http import CollectServer, Register, ssl_context

__all__ = ["parse_listen", "register"]

_log = logging.getLogger(__name__)


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` (port 0: any free one) to (host, port)."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "collect",
        help="serve a collection point: gates hand in their batches and chain heads",
        description="Serve the collection point directory DIR over HTTP (HTTPS with --cert "
        "and --key). Gates upload each closed service day's signed batch, resumably; a "
        "batch is verified against the register before it is kept in DIR/batches and "
        "acknowledged. Signed chain heads are kept in DIR/heads. One 'ready' line goes "
        "to stdout when it listens; each accepted or refused upload is a line on stderr. "
        "SIGTERM or SIGINT stops it (exit 0). Exit status 2: a bad argument, an unreadable "
        "register, or an address it cannot listen on. See docs/collection.md.",
    )
    p.add_argument("--dir", required=True, type=path, help="the collection point directory")
    p.add_argument("--register", required=True, type=path, help="terminal register (terminals.csv)")
    p.add_argument("--listen", required=True, type=parse_listen, help="HOST:PORT (port 0: any)")
    p.add_argument("--tz", default="+08:00", help="UTC offset of the service days (default +08:00)")
    p.add_argument("--cert", type=path, help="TLS certificate chain (PEM), with --key")
    p.add_argument("--key", type=path, help="TLS private key (PEM), with --cert")
    p.add_argument(
        "--max-incoming-bytes",
        type=count("the bytes of uploads in progress"),
        default=DEFAULT_MAX_INCOMING_BYTES,
        help=f"uploads in progress hold at most this much in all (default {DEFAULT_MAX_INCOMING_BYTES})",
    )
    p.add_argument(
        "--partial-ttl-s",
        type=count("seconds"),
        default=DEFAULT_PARTIAL_TTL_S,
        help=f"an upload untouched this long is dropped (default {DEFAULT_PARTIAL_TTL_S})",
    )
    p.add_argument(
        "--max-connections", type=count("connections"), default=64, help="served at once (64)"
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if (args.cert is None) != (args.key is None):
        raise ConfigError("--cert and --key go together")
    offset = parse_utc_offset(args.tz)
    root: Path = args.dir
    point = CollectionPoint(
        root,
        offset,
        max_incoming_bytes=args.max_incoming_bytes,
        partial_ttl_s=args.partial_ttl_s,
    )
    for sub in ("batches", "heads", "incoming", "rejected"):
        (root / sub).mkdir(exist_ok=True)
    terminals = Register(args.register)
    context = ssl_context(args.cert, args.key) if args.cert is not None else None
    server = CollectServer(
        args.listen, point, terminals, ssl_context=context, max_connections=args.max_connections
    )
    stopping = threading.Event()

    def stop(signum: int, frame: object) -> None:
        if not stopping.is_set():
            stopping.set()
            # shutdown() waits for serve_forever, which runs on this very thread.
            threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = server.server_address[:2]
    if isinstance(host, bytes):
        host = host.decode()
    scheme = "https" if context is not None else "http"
    shown = f"[{host}]" if ":" in str(host) else str(host)
    print(f"ready {scheme}://{shown}:{port}/ dir {root} terminals {len(terminals)}", flush=True)
    _log.info("collecting into %s on %s://%s:%s", root, scheme, shown, port)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
    _log.info("stopped")
    sys.stdout.flush()
    return 0
