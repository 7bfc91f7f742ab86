"""`tidal serve`: the recommendations API on 127.0.0.1 (uvicorn, one process; scripts/stack.sh starts it).

    tidal serve --port 18400
"""

from __future__ import annotations

import argparse
import ipaddress
import sys

from tidal.config import load_settings

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def check_host(host: str) -> str | None:
    """None for a loopback address; otherwise why it is refused (serving has no auth of its own)."""
    if host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return (f"--host {host!r} refused: serving binds to loopback only ({', '.join(LOOPBACK_HOSTS)}); "
            "put an authenticating proxy in front of it to reach it from elsewhere")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tidal serve", description="Serve top-k recommendations over HTTP.")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=18400, help="port (default 18400; the stack's TIDAL_SERVING_PORT)")
    parser.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"))
    args = parser.parse_args(argv)
    problem = check_host(args.host)
    if problem or not 1 <= args.port <= 65535:
        print(f"tidal serve: {problem or f'--port {args.port} must be from 1 to 65535'}", file=sys.stderr)
        return 2
    import uvicorn

    from serving.app import create_app

    settings = load_settings()
    print(f"[serve] http://{args.host}:{args.port} registry {settings.home / 'registry'} online store "
          f"{settings.online_store.display_url or 'none'}", flush=True)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level,
                access_log=False, timeout_graceful_shutdown=5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
