"""A local Apache Kafka broker without Docker: resolve, format, start, stop, status.

The broker is the pinned `org.apache.kafka:kafka_2.13` release named in
`ops/kafka/pom.xml`, resolved from Maven Central by the machine's `mvn` into a
git-ignored cache, and run as one KRaft broker+controller on 127.0.0.1.
`headwater kafka start|stop|status` and the test session fixture both call this module,
so the tests run the same broker a user does.

With `sasl_port`, the node also listens for SASL_SSL there (SCRAM-SHA-512 over TLS, the
certificate signed by a test CA made at its first start, `ca_file`), for one SCRAM user
created when the storage is formatted; PLAINTEXT stays as it is.

>>> LocalKafka(Path("/tmp/hw"), port=19092, controller_port=19093).bootstrap
'127.0.0.1:19092'
>>> node = LocalKafka(Path("/tmp/hw"), sasl_port=19094, sasl_password="s3cret")
>>> node.sasl_bootstrap, "s3cret" in repr(node)
('127.0.0.1:19094', False)
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["BrokerError", "LocalKafka", "OPS_DIR", "make_ca"]

OPS_DIR = Path(__file__).resolve().parent.parent / "ops"
POM = OPS_DIR / "kafka" / "pom.xml"


class BrokerError(RuntimeError):
    """The local broker could not be resolved, started or stopped; the message says why."""


def _require(tool: str, what: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise BrokerError(f"`{tool}` not found: install {what} (e.g. apt-get install {what})")
    return path


@dataclass(frozen=True)
class LocalKafka:
    """One KRaft node on 127.0.0.1, its files under `home`.

    `home/lib` holds the resolved jars (shared by every node using the same home);
    `home/<port>/` holds that node's data, config, log and pid file, so tests can run a
    second node on other ports beside the main one.
    """

    home: Path
    port: int = 9092
    controller_port: int = 9093
    sasl_port: int | None = None
    sasl_username: str = "headwater"
    sasl_password: str = field(default="", repr=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def sasl_bootstrap(self) -> str:
        """The SASL_SSL listener's address (set `sasl_port`)."""
        return f"127.0.0.1:{self.sasl_port}"

    @property
    def tls_dir(self) -> Path:
        return self.node_dir / "tls"

    @property
    def ca_file(self) -> Path:
        """The test CA's certificate (PEM): what clients trust (HEADWATER_SSL_CAFILE)."""
        return self.tls_dir / "ca.pem"

    @property
    def lib(self) -> Path:
        return self.home / "lib"

    @property
    def node_dir(self) -> Path:
        return self.home / str(self.port)

    @property
    def log_path(self) -> Path:
        return self.node_dir / "server.log"

    @property
    def pid_path(self) -> Path:
        return self.node_dir / "kafka.pid"

    # -- resolve and format --------------------------------------------------------

    def resolve(self) -> None:
        """Copy the pinned broker's runtime jars from Maven Central into `lib/`, once."""
        if not POM.exists():
            raise BrokerError(f"{POM} not found: run `headwater kafka` from a headwater checkout")
        marker = self.lib / ".resolved"
        if marker.exists() and marker.read_text() == POM.read_text():
            return
        _require("java", "a Java 17+ runtime (openjdk-17-jre-headless)")
        mvn = _require("mvn", "Apache Maven (maven)")
        if self.lib.exists():
            shutil.rmtree(self.lib)
        self.lib.mkdir(parents=True)
        cmd = [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
               "-DincludeScope=runtime", f"-DoutputDirectory={self.lib}"]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
            raise BrokerError("maven could not resolve Kafka: " + " | ".join(tail))
        marker.write_text(POM.read_text())

    def _java(self, main: str, *args: str) -> list[str]:
        java = _require("java", "a Java 17+ runtime (openjdk-17-jre-headless)")
        log4j = self.node_dir / "log4j2.properties"
        return [java, "-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{self.lib}/*", main, *args]

    def _write_config(self) -> Path:
        self.node_dir.mkdir(parents=True, exist_ok=True)
        data = self.node_dir / "data"
        props = self.node_dir / "server.properties"
        listeners = f"PLAINTEXT://127.0.0.1:{self.port}"
        sasl: list[str] = []
        if self.sasl_port is not None:
            listeners += f",SASL_SSL://127.0.0.1:{self.sasl_port}"
            sasl = self._sasl_config()
        props.touch(mode=0o600)  # it holds the keystore password
        props.write_text("\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
            f"listeners={listeners},CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners={listeners}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
            + (",SASL_SSL:SASL_SSL" if sasl else ""),
            *sasl,
            f"log.dirs={data}",
            "num.partitions=1",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=4",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "transaction.state.log.num.partitions=4",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",
            "log.retention.hours=24",
            "message.max.bytes=8388608",
            "",
        ]))
        (self.node_dir / "log4j2.properties").write_text("\n".join([
            "status = warn",
            "appender.file.type = File",
            "appender.file.name = file",
            f"appender.file.fileName = {self.log_path}",
            "appender.file.layout.type = PatternLayout",
            "appender.file.layout.pattern = [%d] %p %m (%c)%n",
            "rootLogger.level = info",
            "rootLogger.appenderRef.file.ref = file",
            "logger.kafka.name = kafka",
            "logger.kafka.level = warn",
            "logger.state.name = state.change.logger",
            "logger.state.level = warn",
            "",
        ]))
        scram_user = self.node_dir / "scram-user"
        if not (data / "meta.properties").exists():
            scram: list[str] = []
            if self.sasl_port is not None:  # KRaft keeps SCRAM users in its metadata log
                scram = ["--add-scram", f'SCRAM-SHA-512=[name={self.sasl_username},'
                         f'password="{self.sasl_password}"]']
            cluster = self._run_java("kafka.tools.StorageTool", "random-uuid").strip()
            self._run_java("kafka.tools.StorageTool", "format", "-t", cluster or str(uuid.uuid4()),
                           "-c", str(props), "--ignore-formatted", *scram)
            scram_user.unlink(missing_ok=True)
            if scram:
                scram_user.write_text(self.sasl_username)
        elif self.sasl_port is not None and (not scram_user.exists()
                                             or scram_user.read_text() != self.sasl_username):
            raise BrokerError(f"{data} was formatted without SCRAM user {self.sasl_username!r} "
                              f"(users are made at format time): remove {data} and start again")
        return props

    def _sasl_config(self) -> list[str]:
        """The SASL_SSL listener's properties; the CA and keystore are made the first time."""
        if not self.sasl_password:
            raise BrokerError("a SASL_SSL listener needs a SCRAM user and password "
                              "(HEADWATER_SASL_USERNAME, HEADWATER_SASL_PASSWORD)")
        bad = set(self.sasl_password) & set('",[]=\\ ') or set(self.sasl_username) & set('",[]=\\ ')
        if bad:
            raise BrokerError(f"the local broker's SCRAM user and password cannot hold any of "
                              f"{''.join(sorted(bad))!r} (kafka-storage --add-scram syntax)")
        store = self.tls_dir / "broker.p12"
        secret = self.tls_dir / "store-password"
        if not (store.exists() and secret.exists()):
            self.tls_dir.mkdir(parents=True, exist_ok=True)
            secret.touch(mode=0o600)
            secret.write_text(secrets.token_urlsafe(24))
            _broker_keystore(self.tls_dir, secret.read_text())
        password = secret.read_text()
        prefix = "listener.name.sasl_ssl."
        return [
            "sasl.enabled.mechanisms=SCRAM-SHA-512",
            f"{prefix}sasl.enabled.mechanisms=SCRAM-SHA-512",
            f"{prefix}scram-sha-512.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            f"{prefix}ssl.keystore.type=PKCS12",
            f"{prefix}ssl.keystore.location={store}",
            f"{prefix}ssl.keystore.password={password}",
            f"{prefix}ssl.key.password={password}",
        ]

    def _run_java(self, main: str, *args: str) -> str:
        done = subprocess.run(self._java(main, *args), capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise BrokerError(f"{main} failed: {(done.stdout + done.stderr).strip()[-400:]}")
        return done.stdout

    # -- lifecycle -------------------------------------------------------------------

    def pid(self) -> int | None:
        """The pid of our running broker, or None (a stale pid file is removed)."""
        try:
            pid = int(self.pid_path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            self.pid_path.unlink(missing_ok=True)
            return None
        if cmdline and (b"kafka.Kafka" not in cmdline
                        or str(self.node_dir).encode() not in cmdline):
            self.pid_path.unlink(missing_ok=True)  # the pid was reused by another program
            return None
        return pid  # an empty cmdline is a process being exec'd: the JVM launcher does that

    def answers(self, timeout: float = 1.0) -> bool:
        """True when the broker answers a metadata request on its listener."""
        return _metadata_ok("127.0.0.1", self.port, timeout)

    def _sasl_listening(self) -> bool:
        return self.sasl_port is None or _port_open(self.sasl_port)

    def start(self, wait: float = 90.0) -> int:
        """Start the broker unless it runs already; wait until it answers metadata."""
        pid = self.pid()
        if pid is not None and self.answers():
            if not self._sasl_listening():
                raise BrokerError(f"kafka runs without a SASL_SSL listener on {self.sasl_port}: "
                                  "stop it, then start it with one")
            return pid
        if pid is None:
            if _port_open(self.port):
                raise BrokerError(f"port {self.port} is taken by another process; "
                                  "set HEADWATER_KAFKA_PORT to a free one")
            if self.sasl_port is not None and _port_open(self.sasl_port):
                raise BrokerError(f"port {self.sasl_port} is taken by another process; "
                                  "set HEADWATER_KAFKA_SASL_PORT to a free one")
            self.resolve()
            props = self._write_config()
            with open(self.log_path.with_suffix(".out"), "ab") as out:
                proc = subprocess.Popen(self._java("kafka.Kafka", str(props)), stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True)
            self.pid_path.write_text(str(proc.pid))
            pid = proc.pid
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.answers() and self._sasl_listening():
                return pid
            if self.pid() is None:
                raise BrokerError(f"kafka exited during start; see {self.log_path}")
            time.sleep(0.2)
        self.stop()
        raise BrokerError(f"kafka did not answer within {wait:.0f}s; see {self.log_path}")

    def stop(self, wait: float = 60.0) -> bool:
        """SIGTERM the broker and wait for it to exit (SIGKILL after `wait`)."""
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.05)
        self.pid_path.unlink(missing_ok=True)
        return True

    def status(self) -> str:
        """One line: running or not, where, and the log path."""
        pid = self.pid()
        if pid is None:
            return f"kafka stopped (log: {self.log_path})"
        state = "running" if self.answers() else "starting"
        sasl = (f" sasl_ssl={self.sasl_bootstrap} ca={self.ca_file}"
                if self.sasl_port is not None and _port_open(self.sasl_port) else "")
        return f"kafka {state} pid={pid} bootstrap={self.bootstrap}{sasl} (log: {self.log_path})"


# -- the test CA and the broker's certificate (keytool: Java's, so always there) ------

_EC = ("-keyalg", "EC", "-groupname", "secp256r1", "-validity", "3650")


def _keytool(password: str, *args: str) -> None:
    """Run keytool with `password` for every store and key (from the environment, so it
    stays off the command line)."""
    keytool = shutil.which("keytool")
    if keytool is None:
        java = Path(_require("java", "a Java 17+ runtime (openjdk-17-jre-headless)")).resolve()
        keytool = str(java.parent / "keytool")
    cmd = [keytool, "-J-XX:TieredStopAtLevel=1", "-J-XX:+UseSerialGC", *args,
           "-storepass:env", "HW_STOREPASS"]
    if args[0] in ("-genkeypair", "-gencert", "-certreq"):
        cmd += ["-keypass:env", "HW_STOREPASS"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          env={**os.environ, "HW_STOREPASS": password})
    if done.returncode != 0:
        raise BrokerError(f"keytool {args[0]} failed: {(done.stdout + done.stderr).strip()[-300:]}")


def make_ca(folder: Path, password: str, name: str = "headwater-test-ca") -> Path:
    """A new self-signed CA in `folder` (its key in ca.p12 under `password`); returns its
    certificate, ca.pem."""
    folder.mkdir(parents=True, exist_ok=True)
    store, pem = folder / "ca.p12", folder / "ca.pem"
    store.unlink(missing_ok=True)
    _keytool(password, "-genkeypair", "-alias", "ca", *_EC, "-dname", f"CN={name}",
             "-ext", "bc:c", "-keystore", str(store), "-storetype", "PKCS12")
    _keytool(password, "-exportcert", "-alias", "ca", "-keystore", str(store), "-rfc",
             "-file", str(pem))
    return pem


def _broker_keystore(folder: Path, password: str) -> None:
    """A test CA and broker.p12: the broker's key and its certificate for 127.0.0.1 and
    localhost, signed by that CA."""
    ca = make_ca(folder, password)
    store, csr, cert = folder / "broker.p12", folder / "broker.csr", folder / "broker.pem"
    store.unlink(missing_ok=True)
    _keytool(password, "-genkeypair", "-alias", "broker", *_EC, "-dname", "CN=localhost",
             "-keystore", str(store), "-storetype", "PKCS12")
    _keytool(password, "-certreq", "-alias", "broker", "-keystore", str(store),
             "-file", str(csr))
    _keytool(password, "-gencert", "-alias", "ca", "-keystore", str(folder / "ca.p12"),
             "-infile", str(csr), "-outfile", str(cert), "-rfc", "-validity", "3650",
             "-ext", "SAN=ip:127.0.0.1,dns:localhost")
    _keytool(password, "-importcert", "-alias", "ca", "-file", str(ca), "-keystore", str(store),
             "-noprompt")
    _keytool(password, "-importcert", "-alias", "broker", "-file", str(cert),
             "-keystore", str(store))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours still answers kill(0); reap it
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return False
    except ChildProcessError:
        pass
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and ") Z " not in stat.read_text()


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _metadata_ok(host: str, port: int, timeout: float) -> bool:
    """Send a Metadata request (v4) and check that the reply lists at least one broker."""
    request = (b"\x00\x03"  # api key 3: Metadata
               b"\x00\x04"  # version 4
               b"\x00\x00\x00\x01"  # correlation id
               b"\x00\x02hw"  # client id
               b"\xff\xff\xff\xff"  # topics: null, meaning all
               b"\x00")  # allow_auto_topic_creation: false
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(len(request).to_bytes(4, "big") + request)
            size = int.from_bytes(_recv_exactly(s, 4), "big")
            body = _recv_exactly(s, size)
    except OSError:
        return False
    # correlation id (4), throttle time (4), broker count (4)
    return body[:4] == b"\x00\x00\x00\x01" and int.from_bytes(body[8:12], "big") >= 1


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed")
        buf += chunk
    return buf
