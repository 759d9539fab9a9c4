"""A single-node Apache Kafka (KRaft) broker on loopback, for the demo, the tests and CI.

The jars come from Maven Central through Maven into a cache outside the work tree; the
broker runs as one combined broker+controller JVM with a small heap and short retention.
Only the standard library is used here, so ``scripts/kafka`` works before any virtualenv
exists.

Example:
    >>> from pathlib import Path
    >>> broker = EmbeddedKafka(Path("/tmp/recloop-cache"))  # doctest: +SKIP
    >>> info = broker.start()  # doctest: +SKIP
    >>> info.bootstrap_servers  # doctest: +SKIP
    '127.0.0.1:39092'

"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from operators.files import write_atomic  # standard library only, like this module

#: Kafka 4.3.1 is the newest release whose broker *and* tools jars (the console
#: producer/consumer) are both served by Maven Central here; aiokafka 0.14 (Faust) and
#: librdkafka 2.16 (confluent-kafka) both speak its protocol versions (KIP-896).
KAFKA_VERSION = "4.3.1"
LOG4J_VERSION = "2.24.3"
#: Kafka logs through SLF4J 2; a transitive 1.7 API would silence it, so pin the API.
SLF4J_VERSION = "2.0.17"
READY_MARKER = "Kafka Server started"
#: Kafka's command-line tools (``bin/kafka-<name>.sh``) and their main classes in these jars.
TOOLS = {
    "console-producer": "org.apache.kafka.tools.ConsoleProducer",
    "console-consumer": "org.apache.kafka.tools.consumer.ConsoleConsumer",
    "topics": "org.apache.kafka.tools.TopicCommand",
}

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.recloop</groupId>
  <artifactId>embedded-kafka</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId>
      <version>{slf4j}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log_dir}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.state.name = state.change.logger
logger.state.level = WARN
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = WARN
"""


class BrokerError(RuntimeError):
    """The embedded broker could not be fetched, started or stopped."""


@dataclass(frozen=True)
class BrokerInfo:
    """Where a running embedded broker listens and keeps its files."""

    pid: int
    port: int
    controller_port: int
    data_dir: str
    log_dir: str
    version: str

    @property
    def bootstrap_servers(self) -> str:
        """The ``host:port`` clients connect to."""
        return f"127.0.0.1:{self.port}"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/recloop`` (or ``~/.cache/recloop``): outside the work tree."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "recloop"


def new_cluster_id(random_bytes: Callable[[], bytes] = lambda: uuid.uuid4().bytes) -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64, never starting with ``-``.

    ``kafka-storage format -t`` parses an id that starts with ``-`` (1 in 64 of them) as
    an option and fails; Kafka's own ``Uuid.randomUuid`` draws again in that case too.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(random_bytes()).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _accepts_connections(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); look at its state where /proc exists.
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            return stat.read_text().split(") ", 1)[1][0] != "Z"
        except (OSError, IndexError):
            return True
    return True


def _write_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda out: out.write(text.encode()))


class EmbeddedKafka:
    """Fetches, starts, stops and reports on one local KRaft broker.

    Args:
        cache_dir: where jars, broker data and logs live (never inside the repository).
        version: the Apache Kafka version to fetch.
        heap: the JVM heap, e.g. ``"512m"``.
        jar_dir: the jars of another broker's cache to reuse (a second broker, e.g. the
            fault suite's own, then needs no Maven run); ``cache_dir``'s own by default.

    """

    def __init__(
        self,
        cache_dir: Path,
        version: str = KAFKA_VERSION,
        heap: str = "512m",
        jar_dir: Path | None = None,
    ) -> None:
        self.cache_dir = cache_dir
        self.version = version
        self.heap = heap
        self.jar_dir = jar_dir if jar_dir is not None else cache_dir / "kafka" / version / "jars"
        self.home = cache_dir / "broker"
        self.state_file = self.home / "broker.json"
        # The JVM this object started, kept so that stop() can reap it (no zombie, and no
        # "subprocess still running" warning while the broker is meant to outlive a call).
        self._process: subprocess.Popen[bytes] | None = None

    # -- jars ---------------------------------------------------------------------------
    def ensure_jars(self) -> Path:
        """Fetch Kafka and a log4j2 binding with Maven once; later calls reuse them."""
        marker = self.jar_dir / ".complete"
        expected = f"{self.version} log4j {LOG4J_VERSION} slf4j {SLF4J_VERSION}"
        if marker.exists() and marker.read_text() == expected:
            return self.jar_dir
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BrokerError("Maven (mvn) is not on PATH; it fetches the Kafka jars.")
        if shutil.which("java") is None:
            raise BrokerError("Java 17+ (java) is not on PATH; the embedded broker needs it.")
        work = Path(tempfile.mkdtemp(prefix="recloop-mvn-"))
        try:
            (work / "pom.xml").write_text(
                _POM.format(kafka=self.version, log4j=LOG4J_VERSION, slf4j=SLF4J_VERSION)
            )
            staging = work / "jars"
            cmd = [
                mvn,
                "-q",
                "-B",
                "-f",
                str(work / "pom.xml"),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={staging}",
                "-DincludeScope=runtime",
            ]
            print(f"fetching Apache Kafka {self.version} jars with Maven ...", file=sys.stderr)
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise BrokerError(f"Maven could not fetch Kafka:\n{done.stdout}\n{done.stderr}")
            (staging / ".complete").write_text(expected)
            self.jar_dir.parent.mkdir(parents=True, exist_ok=True)
            if self.jar_dir.exists():
                shutil.rmtree(self.jar_dir)
            os.replace(staging, self.jar_dir)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return self.jar_dir

    def _java(self, main: str, *args: str, heap: str = "256m") -> list[str]:
        log4j = self.home / "log4j2.properties"
        return [
            "java",
            f"-Xmx{heap}",
            f"-Xms{heap}",
            "-XX:+UseG1GC",
            "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}",
            f"-Dkafka.logs.dir={self.home / 'logs'}",
            "-cp",
            f"{self.jar_dir}/*",
            main,
            *args,
        ]

    def console_command(self, tool: str, *args: str) -> list[str]:
        """The command line running one of Kafka's tools from the cached jars.

        The same as ``bin/kafka-<tool>.sh`` of a Kafka download; logs go to stderr at WARN
        (not to the broker's log). Fetches the jars first if they are missing.

        Args:
            tool: a name in :data:`TOOLS`, e.g. ``"console-producer"``.
            args: the tool's own arguments, e.g. ``"--bootstrap-server", "127.0.0.1:9092"``.

        Raises:
            ValueError: ``tool`` is not one of :data:`TOOLS`.

        """
        if tool not in TOOLS:
            raise ValueError(f"unknown Kafka tool {tool!r}; known: {', '.join(sorted(TOOLS))}")
        jars = self.ensure_jars()
        return [
            "java",
            "-Xmx128m",
            "-XX:+UseG1GC",
            "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
            "-Dlog4j2.level=WARN",
            "-cp",
            f"{jars}/*",
            TOOLS[tool],
            *args,
        ]

    # -- lifecycle ------------------------------------------------------------------------
    def status(self) -> BrokerInfo | None:
        """The running broker, or ``None`` when none is running."""
        if not self.state_file.exists():
            return None
        try:
            info = BrokerInfo(**json.loads(self.state_file.read_text()))
        except (ValueError, TypeError):
            return None
        if _pid_alive(info.pid) and _accepts_connections(info.port):
            return info
        return None

    def start(self, timeout_s: float = 120.0) -> BrokerInfo:
        """Start the broker (or return the one already running) and wait until it is ready."""
        running = self.status()
        if running is not None:
            return running
        self.ensure_jars()
        data_dir = self.home / "data"
        log_dir = self.home / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        previous = self._previous_ports()
        if previous and all(_port_is_free(p) for p in previous):
            port, cport = previous
        else:
            port, cport = _free_port(), _free_port()
            while cport == port:
                cport = _free_port()
        props = self.home / "server.properties"
        _write_atomic(self.home / "log4j2.properties", _LOG4J2.format(log_dir=log_dir))
        _write_atomic(props, self._server_properties(port, cport, data_dir))
        if not (data_dir / "meta.properties").exists():
            cluster_id = new_cluster_id()
            fmt = subprocess.run(
                self._java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)),
                capture_output=True,
                text=True,
                check=False,
            )
            if fmt.returncode != 0:
                raise BrokerError(f"formatting KRaft storage failed:\n{fmt.stdout}{fmt.stderr}")
        server_log = log_dir / "server.log"
        offset = server_log.stat().st_size if server_log.exists() else 0
        console = open(log_dir / "console.log", "ab")  # noqa: SIM115 - handed to the JVM
        try:
            proc = subprocess.Popen(
                self._java("kafka.Kafka", str(props), heap=self.heap),
                stdout=console,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            console.close()
        info = BrokerInfo(
            pid=proc.pid,
            port=port,
            controller_port=cport,
            data_dir=str(data_dir),
            log_dir=str(log_dir),
            version=self.version,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:  # poll() reaps it
                raise BrokerError(
                    f"the broker exited with code {proc.returncode}; see {log_dir}/server.log "
                    f"and {log_dir}/console.log"
                )
            if _accepts_connections(port) and self._log_says_ready(server_log, offset):
                _write_atomic(self.state_file, json.dumps(asdict(info)))
                self._process = proc
                return info
            time.sleep(0.2)
        proc.kill()
        proc.wait()
        raise BrokerError(
            f"the broker did not become ready in {timeout_s:.0f}s; "
            f"see {log_dir}/server.log and {log_dir}/console.log"
        )

    def stop(self, timeout_s: float = 60.0) -> bool:
        """Stop the running broker cleanly (SIGTERM, then SIGKILL). True if one was running."""
        if not self.state_file.exists():
            return False
        try:
            info = BrokerInfo(**json.loads(self.state_file.read_text()))
        except (ValueError, TypeError):
            self.state_file.unlink(missing_ok=True)
            return False
        was_running = _pid_alive(info.pid)
        if was_running:
            os.kill(info.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while _pid_alive(info.pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _pid_alive(info.pid):
                os.kill(info.pid, signal.SIGKILL)
        if self._process is not None and self._process.pid == info.pid:
            self._process.wait()
        self._process = None
        self.state_file.unlink(missing_ok=True)
        return was_running

    def reset(self) -> None:
        """Stop the broker and delete its data (topics, offsets), keeping the jars."""
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)

    # -- helpers --------------------------------------------------------------------------
    def _previous_ports(self) -> tuple[int, int] | None:
        props = self.home / "server.properties"
        if not props.exists():
            return None
        values = dict(line.split("=", 1) for line in props.read_text().splitlines() if "=" in line)
        try:
            port = int(values["advertised.listeners"].rsplit(":", 1)[1])
            cport = int(values["controller.quorum.voters"].rsplit(":", 1)[1])
        except (KeyError, ValueError, IndexError):
            return None
        return port, cport

    @staticmethod
    def _log_says_ready(server_log: Path, offset: int) -> bool:
        if not server_log.exists():
            return False
        with server_log.open("rb") as handle:
            handle.seek(offset)
            return READY_MARKER.encode() in handle.read()

    @staticmethod
    def _server_properties(port: int, cport: int, data_dir: Path) -> str:
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{cport}",
            "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(data_dir),
            "num.partitions": "1",
            "auto.create.topics.enable": "true",
            "delete.topic.enable": "true",
            # one node: every internal topic has one replica and few partitions, so the
            # group coordinator comes up in a second instead of creating 50 partitions.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # short retention: this broker is for development, tests and CI.
            "log.retention.hours": "6",
            "log.retention.bytes": str(256 * 1024 * 1024),
            "log.segment.bytes": str(32 * 1024 * 1024),
            "log.retention.check.interval.ms": "60000",
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
            "message.max.bytes": str(2 * 1024 * 1024),
        }
        return "".join(f"{key}={value}\n" for key, value in settings.items())


def main(argv: list[str] | None = None) -> int:
    """``scripts/kafka`` and ``recloop kafka``: start, stop, status, reset, fetch."""
    parser = argparse.ArgumentParser(prog="recloop kafka", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["start", "stop", "status", "reset", "fetch"])
    parser.add_argument("--cache-dir", type=Path, default=None, help="default ~/.cache/recloop")
    args = parser.parse_args(argv)
    broker = EmbeddedKafka(args.cache_dir or default_cache_dir())
    try:
        if args.action == "fetch":
            print(broker.ensure_jars())
        elif args.action == "start":
            began = time.monotonic()
            reused = broker.status() is not None
            info = broker.start()
            took = time.monotonic() - began
            how = "already running" if reused else f"started in {took:.1f}s"
            print(f"Kafka {info.version} {how} at {info.bootstrap_servers} (logs: {info.log_dir})")
        elif args.action == "stop":
            print("stopped" if broker.stop() else "no embedded broker was running")
        elif args.action == "reset":
            broker.reset()
            print("embedded broker stopped and its data removed")
        else:
            current = broker.status()
            if current is None:
                print("not running")
                return 1
            print(
                f"running at {current.bootstrap_servers} (pid {current.pid}, "
                f"logs: {current.log_dir})"
            )
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
