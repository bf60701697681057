"""A private redis-server for the SAQ comparison: 127.0.0.1, a free port, its own temp dir.

Configs: ``redis-mem`` (no persistence) and ``redis-aof`` (appendonly yes, appendfsync everysec,
Redis' default AOF setting), optionally ``redis-aof-always`` (appendfsync always).
The server is stopped by its PID when the context exits.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

from bench_common import stop_process

try:
    import redis
except ImportError:  # optional peer: the SAQ comparison is skipped
    redis = None

REDIS_CONFIGS: dict[str, list[str]] = {
    "redis-mem": ["--save", "", "--appendonly", "no"],
    "redis-aof": ["--save", "", "--appendonly", "yes", "--appendfsync", "everysec"],
    "redis-aof-always": ["--save", "", "--appendonly", "yes", "--appendfsync", "always"],
}


def redis_available() -> str:
    """An empty string when redis-server and saq[redis] are usable, else the reason."""
    if shutil.which("redis-server") is None:
        return "redis-server not installed (apt-get install -y redis-server)"
    if redis is None or importlib.util.find_spec("saq") is None:
        return "saq or redis not importable (pip install 'saq[redis]>=0.26,<0.27')"
    return ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}")
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not answer PING within 10 s")
    finally:
        client.close()


@contextlib.contextmanager
def redis_server(config: str, workdir: str) -> Iterator[str]:
    """Run redis-server with ``config``; yield its URL."""
    port = free_port()
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "no"]
    args += ["--dir", workdir, "--logfile", "", "--loglevel", "warning"]
    args += REDIS_CONFIGS[config]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_ready(port, proc)
        yield f"redis://127.0.0.1:{port}"
    finally:
        stop_process(proc)


def flush(url: str) -> None:
    """Empty the server between runs."""
    client = redis.Redis.from_url(url)
    try:
        client.flushall()
    finally:
        client.close()


def used_memory(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        info: dict[str, Any] = client.info("memory")
        return int(info["used_memory"])
    finally:
        client.close()
