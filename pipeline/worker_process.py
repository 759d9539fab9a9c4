"""A worker in a child process: how the demo, the tests and the fault suite run one.

The child gets the parent's settings as a YAML file, so it runs exactly the
configuration the parent resolved (broker address, topic prefix, state directory).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from pipeline.settings import Settings


class WorkerProcess:
    """Start, stop or kill ``recloop worker`` with the given settings.

    Args:
        settings: resolved settings (``kafka.bootstrap_servers`` set).
        config_path: where to write the child's settings file.
        log_path: where the child's output goes.

    """

    def __init__(
        self,
        settings: Settings,
        config_path: Path,
        log_path: Path,
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._stopping = False  # SIGTERM sent to the current child

    def start(self) -> None:
        """Launch the worker process (returns at once; it joins the group in the background)."""
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        # the token stays out of the file (docs/settings.md): the child gets it in its env
        dumped = self.settings.model_dump(mode="json", exclude={"http": {"token"}})
        self.config_path.write_text(yaml.safe_dump(dumped))
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECLOOP__")}
        token = self.settings.http.token
        if token is not None:  # quoted: the child reads env values as YAML scalars
            env["RECLOOP__HTTP__TOKEN"] = json.dumps(token, ensure_ascii=False)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._stopping = False
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline", "--config", str(self.config_path), "worker"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )

    @property
    def running(self) -> bool:
        """Whether the child is alive."""
        return self.proc is not None and self.proc.poll() is None

    def request_stop(self) -> None:
        """SIGTERM, without waiting: to stop several workers at once, then :meth:`stop` each.

        Workers of one group stopped one after another make the last ones stop in the
        middle of the rebalances the first ones cause, which Faust may not finish.
        """
        if self.proc is not None and self.proc.poll() is None and not self._stopping:
            self.proc.send_signal(signal.SIGTERM)
            self._stopping = True

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (unless requested already) and wait (SIGKILL after ``timeout_s``).

        Returns:
            The exit code (negative: the signal that ended it).

        """
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.request_stop()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """SIGKILL (or ``sig``), as a crash would, and reap the child."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait()

    def wait(self, timeout_s: float) -> int | None:
        """Wait for the child to exit by itself; its exit code, or ``None`` if still running."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def log_tail(self, lines: int = 40) -> str:
        """The end of the child's output, for error messages."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_for_log(self, text: str, timeout_s: float = 60.0) -> bool:
        """Wait until the child's output contains ``text`` (or it dies, or time runs out)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.log_path.exists() and text in self.log_path.read_text(errors="replace"):
                return True
            if not self.running:
                return False
            time.sleep(0.1)
        return False
