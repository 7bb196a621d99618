"""Hosting the page: the optional web stack (Starlette and uvicorn, md4's ``serve`` extra), whether an address is
this machine's own, and the socket and uvicorn server that serve the application."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.util import find_spec

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")
# Headless chromium as the browser tests and the docs' screenshots start it: no sandbox (root), and none of its
# background connections, which a closed network refuses many at a time
HEADLESS_CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def require_stack() -> None:
    """Refuse in one sentence when the web stack is not installed."""
    missing = [name for name in ("starlette", "uvicorn") if find_spec(name) is None]
    if missing:
        raise ValueError(
            f"md4 serve needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed; "
            "pip install 'md4[serve]'."
        )


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (localhost, 127.0.0.0/8, ::1)."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port`` (0: any free port), or one sentence saying why not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        raise ValueError(
            f"--host {host} is not an address of this machine; use 127.0.0.1 (this machine only)."
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise ValueError(
            f"Cannot listen on {host}:{port} ({err.strerror}); another program may use the port: pass --port N."
        ) from None
    sock.listen(64)
    sock.set_inheritable(True)
    return sock


def server_for(app, sock: socket.socket):
    """A uvicorn server of ``app`` on ``sock``, quiet but for errors; ``.run(sockets=[sock])`` serves until
    Ctrl-C, ``.should_exit = True`` stops it."""
    import uvicorn

    host, port = sock.getsockname()[:2]
    return uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=2)
    )


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


@contextmanager
def running(app, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` from a background thread for the duration of the block, yielding its URL (for tests and
    scripts; ``md4 serve`` serves in the foreground)."""
    sock = bind(host, port)
    server = server_for(app, sock)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="md4-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        if not server.started:
            raise RuntimeError("The web server did not start within 30 s; see the errors above.")
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
