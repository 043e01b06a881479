"""A real Mosquitto for the MQTT tests, started by the test, and a real subscriber (a paho client).

The broker runs from Debian's ``/usr/sbin/mosquitto`` on a free port of 127.0.0.1, as
``nobody`` when the tests run as root, with its configuration, persistence file and TLS
files in a temporary folder that user owns. It can be killed (SIGKILL) and started again on
the same port; it keeps sessions on disk after every change, so the test's subscriber (a
persistent session, QoS 1) gets what was published while it was reconnecting.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gwkit import wait_for

__all__ = ["MOSQUITTO", "Broker", "Message", "Subscriber", "broker_fixture", "subscriber_fixture"]

MOSQUITTO = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if Path(p).exists()), None)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
UNPRIVILEGED = "nobody"

Message = tuple[str, dict[str, Any]]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Broker:
    """Mosquitto on 127.0.0.1:``port``, optionally TLS (a trustme CA) and password-only."""

    def __init__(self, *, tls: bool = False, users: dict[str, str] | None = None) -> None:
        if MOSQUITTO is None:
            pytest.skip("mosquitto binary not found (apt-get install mosquitto)")
        self.root = os.geteuid() == 0
        # The broker's user must read its folder: tmp_path's parents are private to the test's user.
        self.folder = Path(tempfile.mkdtemp(prefix="wmbus-mosquitto-"))
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.ca_file: Path | None = None
        self.starts = 0
        lines = [f"listener {self.port} 127.0.0.1", "persistence true", f"persistence_location {self.folder}/",
                 "autosave_on_changes true", "autosave_interval 1", "log_dest stderr",
                 "log_type error", "log_type warning", "log_type notice"]
        if tls:
            import trustme

            ca = trustme.CA()
            self.ca_file = self.folder / "ca.pem"
            ca.cert_pem.write_to_path(str(self.ca_file))
            leaf = ca.issue_cert("127.0.0.1", "localhost")
            cert, key = self.folder / "cert.pem", self.folder / "key.pem"
            cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
            leaf.private_key_pem.write_to_path(str(key))
            lines += [f"certfile {cert}", f"keyfile {key}"]
        if users:
            if MOSQUITTO_PASSWD is None:
                pytest.skip("mosquitto_passwd not found (apt-get install mosquitto)")
            passwords = self.folder / "passwords"
            passwords.touch(mode=0o600)
            for user, password in users.items():
                subprocess.run([MOSQUITTO_PASSWD, "-b", str(passwords), user, password], check=True,
                               capture_output=True)
            lines += ["allow_anonymous false", f"password_file {passwords}"]
        else:
            lines.append("allow_anonymous true")
        (self.folder / "mosquitto.conf").write_text("\n".join(lines) + "\n")
        if self.root:
            for path in (self.folder, *self.folder.iterdir()):
                shutil.chown(path, UNPRIVILEGED)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> Broker:
        """Start (or start again, on the same port) and wait until it accepts connections."""
        assert not self.running
        log = open(self.folder / f"mosquitto.{self.starts}.log", "wb")  # noqa: SIM115 (closed below)
        self.starts += 1
        try:
            self.process = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.folder / "mosquitto.conf")], stdout=log, stderr=subprocess.STDOUT,
                **({"user": UNPRIVILEGED, "group": pwd.getpwnam(UNPRIVILEGED).pw_gid, "extra_groups": []}
                   if self.root else {}))
        finally:
            log.close()

        def listening() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"mosquitto exited {self.process.returncode}: {self.log()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
            return False

        wait_for(listening, f"mosquitto listening on 127.0.0.1:{self.port}", 10)
        return self

    def saved(self) -> bool:
        """Whether the broker has written its persistence file (sessions survive a kill from then on)."""
        return (self.folder / "mosquitto.db").exists()

    def freeze(self) -> None:
        """SIGSTOP: the connections stay open but nothing is answered (no PUBACK)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def kill(self) -> None:
        """SIGKILL: an outage with no goodbye to the clients."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.folder.glob("mosquitto.*.log")))

    def url(self, prefix: str = "test", *, user: str | None = None, password: str | None = None) -> str:
        auth = f"{user}:{password}@" if user is not None else ""
        return f"{'mqtts' if self.ca_file else 'mqtt'}://{auth}127.0.0.1:{self.port}/{prefix}"

    def close(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        shutil.rmtree(self.folder, ignore_errors=True)


class Subscriber:
    """A paho client subscribed to ``<prefix>/#`` with QoS 1 in a persistent session, keeping every message in order."""

    def __init__(self, broker: Broker, prefix: str = "test", *, user: str | None = None,
                 password: str | None = None) -> None:
        import paho.mqtt.client as mqtt

        self.prefix = prefix
        self._lock = threading.Lock()
        self._messages: list[Message] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-subscriber-{os.getpid()}",
                                  clean_session=False)
        if user is not None:
            self.client.username_pw_set(user, password)
        if broker.ca_file is not None:
            self.client.tls_set(ca_certs=str(broker.ca_file))
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = self._connected
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._received
        self.client.connect("127.0.0.1", broker.port, keepalive=10)
        self.client.loop_start()
        wait_for(self.subscribed.is_set, f"the subscription to {prefix}/# acknowledged", 10)

    def _connected(self, client: Any, _userdata: Any, _flags: Any, reason: Any, _properties: Any) -> None:
        if not reason.is_failure:
            client.subscribe(f"{self.prefix}/#", qos=1)

    def _received(self, _client: Any, _userdata: Any, message: Any) -> None:
        assert not message.retain, f"{message.topic} arrived with the retain flag"
        with self._lock:
            self._messages.append((message.topic, json.loads(message.payload.decode("utf-8"))))

    @property
    def messages(self) -> list[Message]:
        with self._lock:
            return list(self._messages)

    def keys(self) -> list[str]:
        return [document["key"] for _, document in self.messages]

    def wait_keys(self, keys: set[str], what: str, timeout: float = 20.0) -> list[Message]:
        """Wait until every key in ``keys`` has arrived at least once; the messages so far."""
        wait_for(lambda: keys <= set(self.keys()), what, timeout,
                 context=lambda: f" ({len(keys - set(self.keys()))} of {len(keys)} missing)")
        return self.messages

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(name="broker")
def broker_fixture() -> Iterator[Broker]:
    """A plain Mosquitto on a free port of 127.0.0.1, anonymous clients allowed."""
    pytest.importorskip("paho.mqtt.client", reason="paho-mqtt missing: pip install 'wmbus-stream[hes]'")
    broker = Broker()
    try:
        yield broker.start()
    finally:
        broker.close()


@pytest.fixture(name="subscriber")
def subscriber_fixture(broker: Broker) -> Iterator[Subscriber]:
    """A subscriber to ``test/#`` on the broker fixture."""
    subscriber = Subscriber(broker)
    try:
        yield subscriber
    finally:
        subscriber.close()
