"""Real `headguard serve` processes on free ports, for tests that speak HTTP to a running server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, url: str, process: subprocess.Popen, log: Path):
        self.url, self.process, self.log = url, process, log

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120, **kwargs)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


def wait_ready(process: subprocess.Popen, ready_url: str, log: Path, what: str, timeout: float) -> None:
    """Polls `ready_url` until it answers 200; fails with the log's tail if the process exits or times out."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise AssertionError(f"{what} exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(ready_url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} was not ready in {timeout} s:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)


@contextmanager
def serve(model: Path, log_dir: Path, env: dict[str, str] | None = None, ready_timeout: float = 300,
          name: str = "server"):
    """Starts the guard on `model`, waits for /ready, yields a Server; stops it afterwards."""
    port = free_port()
    cli = Path(sys.executable).with_name("headguard")
    log = log_dir / f"{name}-{port}.log"
    full_env = {**os.environ, "HEADGUARD_STATE_DIR": str(log_dir / f"{name}-state"), **(env or {})}
    with log.open("w") as out:
        process = subprocess.Popen([str(cli), "serve", "--model", str(model), "--port", str(port)],
                                   stdout=out, stderr=subprocess.STDOUT, env=full_env)
    server = Server(f"http://127.0.0.1:{port}", process, log)
    try:
        wait_ready(process, f"{server.url}/ready", log, "the server", ready_timeout)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def worker(log_dir: Path, env: dict[str, str], name: str = "worker"):
    """A `headguard worker` process (its own process group, so a test can kill it whole)."""
    cli = Path(sys.executable).with_name("headguard")
    log = log_dir / f"{name}.log"
    with log.open("w") as out:
        process = subprocess.Popen([str(cli), "worker"], stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "HEADGUARD_WORKER_METRICS_PORT": str(free_port()), **env},
                                   start_new_session=True)
    try:
        time.sleep(1)
        if process.poll() is not None:
            raise AssertionError(f"the worker exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 15)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait()


@contextmanager
def prometheus(config: dict, log_dir: Path, ready_timeout: float = 60):
    """A real Prometheus (Debian's package) on a free port with `config`; yields its base URL."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed: run deploy/ensure-prometheus.sh"
    port = free_port()
    config_file = log_dir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    log = log_dir / "prometheus.log"
    with log.open("w") as out:
        process = subprocess.Popen([binary, f"--config.file={config_file}", f"--storage.tsdb.path={log_dir / 'tsdb'}",
                                    f"--web.listen-address=127.0.0.1:{port}"], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, f"{url}/-/ready", log, "prometheus", ready_timeout)
        yield url
    finally:
        process.terminate()
        process.wait(30)
