"""A `qrun serve` process for tests (tests/test_serve.py, tests/test_hostile_pass2.py): started on a free loopback
port, its stderr collected line by line, and a plain HTTP client for the raw requests the openai client would not
send."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai

QRUN = [sys.executable, "-c", "import sys; from qrun.cli import main; sys.argv[0] = 'qrun'; main()"]


class Reply:
    """An HTTP answer read with the standard library (the raw requests the openai client would not send)."""

    def __init__(self, status: int, headers, body: bytes):
        self.status_code, self.headers, self.text = status, headers, body.decode("utf-8")

    def json(self):
        return json.loads(self.text)


def http(method: str, url: str, *, json_body=None, content: bytes | None = None, headers=None, timeout=60) -> Reply:
    data = json.dumps(json_body).encode() if json_body is not None else content
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Reply(response.status, response.headers, response.read())
    except urllib.error.HTTPError as err:
        return Reply(err.code, err.headers, err.read())


class Server:
    """`qrun serve ... --port 0` in its own process; stderr is collected line by line."""

    def __init__(self, args: list[str], home: Path, *, api_key: str | None = None):
        env = {**os.environ, "QRUN_HOME": str(home)}
        env.pop("QRUN_API_KEY", None)
        if api_key:
            env["QRUN_API_KEY"] = api_key  # the key's other way in; --api-key is the same Click option
        self.api_key = api_key
        self.proc = subprocess.Popen(
            QRUN + ["serve", *args, "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            env=env,
            # SIGINT restored: a suite started as a background job (`pytest &`) would hand it down ignored
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.lines: list[str] = []
        self.listening = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self.listening.wait(120):
            self.proc.kill()
            raise AssertionError(f"the server did not start: {self.log()}")
        self.url = re.search(r"listening on (http://\S+)/v1", self.log()).group(1)

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            if "listening on" in line:
                self.listening.set()
        self.listening.set()

    def log(self) -> str:
        return "\n".join(self.lines)

    def client(self, **kwargs) -> openai.OpenAI:
        options = {"api_key": self.api_key or "unused", "max_retries": 0, "timeout": 120, **kwargs}
        return openai.OpenAI(base_url=self.url + "/v1", **options)

    def wait_for_log(self, needle: str, timeout_s: float = 60) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [line for line in self.lines if needle in line]
            if found:
                return found[-1]
            time.sleep(0.02)
        raise AssertionError(f"no {needle!r} in the log:\n{self.log()}")

    def health(self) -> dict:
        return http("GET", self.url + "/health").json()

    def stop(self, sig: int | None = signal.SIGTERM, timeout_s: float = 30) -> int:
        """Send sig (None: it was sent already) and wait for the exit code."""
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self._reader.join(10)
        return code
