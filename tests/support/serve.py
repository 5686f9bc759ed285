"""A real OpenAI-compatible server for tests and benchmarks: `transformers serve` (the
`transformers[serving]` extra) serving a local model folder on 127.0.0.1, started as a
subprocess on a free port, waited for, and always stopped.

    with TransformersServe(tiny_model_dir("qwen2_5_vl")) as server:
        server.url          # http://127.0.0.1:PORT/v1
        server.model        # the name it serves: the folder's path
        server.stop(); server.start()   # e.g. a server that goes away mid-run

The server pins the one model it was started with and lists it under /v1/models by its
path; it accepts image data: URLs, returns no token logprobs, and a tiny random model may
answer with empty text.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.ports import free_port

START_TIMEOUT_S = 120.0


class TransformersServe:
    """`transformers serve MODEL_DIR --host 127.0.0.1 --port N --device cpu --dtype float32`."""

    def __init__(self, model_dir: Path | str, port: int | None = None) -> None:
        self.model = str(model_dir)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = Path(tempfile.mkstemp(prefix="transformers-serve-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> TransformersServe:
        """Start the server and wait until /health answers (RuntimeError with its log if not)."""
        command = [sys.executable, "-m", "transformers.cli.transformers", "serve", self.model,
                   "--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu", "--dtype", "float32"]
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            cwd=tempfile.gettempdir())
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"transformers serve exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1.0, trust_env=False).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"transformers serve did not answer within {START_TIMEOUT_S:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the server (terminate, then kill after 10 s); a no-op when it is not running."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's output (for failure messages)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return ""

    def __enter__(self) -> TransformersServe:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        self.log_path.unlink(missing_ok=True)
