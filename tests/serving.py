"""Servers on loopback for real HTTP clients, and ports that come from the operating system
(test support): nothing guesses a free port or assumes a closed one stays closed."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI

LISTEN = "0A"  # the TCP state "listening" in /proc/net/tcp


@contextmanager
def served(app: FastAPI) -> Iterator[str]:
    """The app's base URL (`http://127.0.0.1:PORT`) while it runs; shut down cleanly after."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                          lifespan="on", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def within(seconds: float, what: str, reached: Callable[[], bool]) -> None:
    """Until a server reaches the state, failing after `seconds` (polled: the state is the
    server's to reach, nothing here orders its work)."""
    deadline = time.monotonic() + seconds
    while not reached():
        assert time.monotonic() < deadline, f"not within {seconds:g} s: {what}"
        time.sleep(0.01)


@contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port that refuses connections for as long as the block runs.

    The socket is bound but never listens, so a connection gets `ECONNREFUSED` at once, and
    holding it keeps any other program from taking the port meanwhile.
    """
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield int(held.getsockname()[1])


def listening_port(process: subprocess.Popen[bytes] | subprocess.Popen[str],
                   timeout_s: float = 120) -> int:
    """The TCP port a program we started listens on, read from the kernel's socket tables.

    For servers started with port 0 (the kernel picks a free one) that do not print it.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        ports = _listening_ports(process.pid)
        if len(ports) == 1:
            return ports.pop()
        if len(ports) > 1:
            raise RuntimeError(f"process {process.pid} listens on several ports: {ports}")
        if process.poll() is not None:
            raise RuntimeError(f"process {process.pid} exited with {process.returncode} "
                               "before it listened")
        if time.monotonic() > deadline:
            raise RuntimeError(f"process {process.pid} did not listen within {timeout_s:g} s")
        time.sleep(0.1)


def _listening_ports(pid: int) -> set[int]:
    inodes = set()
    for descriptor in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = str(descriptor.readlink())
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == LISTEN and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports
