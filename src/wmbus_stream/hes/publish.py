"""The MQTT fan-out of the reference HES: drains the store's outbox, in order, to a broker with QoS 1.

Each new unique reading is published once to ``<prefix>/<MAN>/<device type, 2 hex
digits>/<meter ID>`` (for example ``wmbus/KAM/07/61000164``), retain off, as one UTF-8 JSON
object: the reading's fields, the raw telegram in uppercase hex and the receptions known
when it was drained (``gateways``). A row leaves the outbox only after the broker's PUBACK,
so a broker that is down or refuses delays publication and loses nothing (at least once;
exactly once while nothing fails). The publisher has its own thread and never holds up
ingestion: the HTTP edge only commits outbox rows and calls ``wake()``; a poll every second
also finds rows another instance committed. paho-mqtt is imported here only, when a
publisher is made.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from ..errors import DependencyMissingError
from ..wire.header import device_type_name
from .store import Publication, Reading, Store, rssi_dbm

if TYPE_CHECKING:
    from paho.mqtt.client import Client

__all__ = ["DEFAULT_PREFIX", "MqttTarget", "Publisher", "load_paho", "parse_mqtt_url", "payload", "topic"]

DEFAULT_PREFIX = "wmbus"
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
WINDOW = 100  # messages in flight (published, PUBACK not yet seen) at once
POLL_SECONDS = 1.0  # how often the outbox is looked at without a wake()
CONNECT_SECONDS = 5.0  # TCP/TLS connect and CONNACK, each
RETRY_SECONDS = (0.5, 30.0)  # first and longest wait between connection attempts (doubling)
STOP_GRACE_SECONDS = 1.0  # how long stop() lets PUBACKs of messages in flight arrive
ACK_SECONDS = 30.0  # messages in flight with no PUBACK for this long: the broker is taken as hung
_TICK = 0.1  # the network loop's select timeout: the latency of wake() and stop() while idle

log = logging.getLogger("wmbus_stream.hes")


def load_paho() -> ModuleType:
    """The ``paho.mqtt.client`` module (version 2 or later), or a clear error saying how to install it."""
    try:
        import paho.mqtt
        import paho.mqtt.client as client
    except ImportError:
        raise DependencyMissingError(
            "--mqtt needs the paho-mqtt package: pip install 'wmbus-stream[hes]'") from None
    major = str(getattr(paho.mqtt, "__version__", "0")).split(".")[0]
    if not major.isdigit() or int(major) < 2:
        raise DependencyMissingError(
            f"--mqtt needs paho-mqtt 2.0 or later (found {paho.mqtt.__version__}): pip install 'wmbus-stream[hes]'")
    return client


@dataclass(frozen=True, slots=True)
class MqttTarget:
    """Where to publish: a broker address, its credentials and the topic prefix (the password is never shown)."""

    tls: bool
    host: str
    port: int
    prefix: str = DEFAULT_PREFIX
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def display(self) -> str:
        """The URL as it may be printed: without the password."""
        user = f"{self.username}@" if self.username is not None else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{host}:{self.port}/{self.prefix}"


def parse_mqtt_url(text: str) -> MqttTarget:
    """``mqtt://[user:pass@]host[:port][/topic-prefix]`` or ``mqtts://...`` (TLS); ValueError says what is wrong."""
    allowed = "mqtt://[user:pass@]host[:port][/topic/prefix] or mqtts://... (TLS)"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"MQTT URL {_hide_password(text)!r}: {exc}; allowed: {allowed}") from None
    if parts.scheme not in DEFAULT_PORTS:
        raise ValueError(f"MQTT URL {_hide_password(text)!r}: scheme {parts.scheme or '(none)'!r} is not mqtt or"
                         f" mqtts; allowed: {allowed}")
    if not parts.hostname:
        raise ValueError(f"MQTT URL {_hide_password(text)!r} names no host; allowed: {allowed}")
    if port == 0:
        raise ValueError(f"MQTT URL {_hide_password(text)!r}: port 0; allowed: 1 to 65535, or none for"
                         f" {DEFAULT_PORTS[parts.scheme]}")
    if parts.netloc.count("@") > 1:
        raise ValueError(f"MQTT URL {_hide_password(text)!r}: '@' in the user name or password; percent-encode it"
                         " (%40)")
    if parts.query or parts.fragment or "?" in text or "#" in text:
        raise ValueError(f"MQTT URL {_hide_password(text)!r}: a query or fragment (? or #) is not allowed (percent-encode"
                         f" them in a password); allowed: {allowed}")
    prefix = unquote(parts.path).strip("/") or DEFAULT_PREFIX
    if any(ch in prefix for ch in "+#\0") or prefix.startswith("$") or "//" in prefix:
        raise ValueError(f"MQTT topic prefix {prefix!r}: no wildcards (+, #), empty levels or leading $ allowed")
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return MqttTarget(tls=parts.scheme == "mqtts", host=parts.hostname, port=port or DEFAULT_PORTS[parts.scheme],
                      prefix=prefix, username=username, password=password)


def _hide_password(text: str) -> str:
    """``text`` with anything between ``user:`` and ``@`` of its authority replaced by ``***``."""
    scheme, sep, rest = text.partition("://")
    authority, slash, path = rest.partition("/")
    if sep and "@" in authority:
        userinfo, _, host = authority.rpartition("@")
        if ":" in userinfo:
            authority = f"{userinfo.split(':', 1)[0]}:***@{host}"
    return f"{scheme}{sep}{authority}{slash}{path}"


def topic(prefix: str, reading: Reading) -> str:
    """``<prefix>/<MAN>/<device type as 2 hex digits>/<meter ID>``, e.g. ``wmbus/KAM/07/61000164``."""
    return f"{prefix}/{reading.manufacturer}/{reading.device_type:02X}/{reading.meter_id}"


def payload(publication: Publication) -> bytes:
    """The JSON object (UTF-8) published for one reading: its fields, the raw telegram and the receptions known."""
    reading = publication.reading
    document: dict[str, Any] = {
        "key": reading.digest,
        "manufacturer": reading.manufacturer,
        "meter_id": reading.meter_id,
        "version": reading.version,
        "device_type": reading.device_type,
        "device_type_name": device_type_name(reading.device_type),
        "ci": reading.ci,
        "access_number": reading.access_number,
        "telegram": reading.telegram.hex().upper(),
        "first_heard": reading.first_heard,
        "first_gateway": reading.first_gateway,
        "stored_at": reading.stored_at,
        "gateways": [
            {"serial": heard.gateway, "heard_at": heard.date, "rssi_code": heard.rssi_code,
             "rssi_dbm": rssi_dbm(heard.rssi_code), "receiver": heard.receiver, "age_minutes": heard.age_minutes}
            for heard in publication.heard
        ],
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class _Down(Exception):
    """The broker cannot be reached, refused, or the connection ended: ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Publisher:
    """A thread that drains ``store``'s outbox to an MQTT broker with QoS 1, reconnecting with backoff."""

    def __init__(self, store: Store, url: str | MqttTarget, *, ca_file: str | None = None, window: int = WINDOW,
                 poll: float = POLL_SECONDS, retry: tuple[float, float] = RETRY_SECONDS,
                 client_id: str | None = None, report: Callable[[str], None] | None = None) -> None:
        self._mqtt = load_paho()
        self.target = parse_mqtt_url(url) if isinstance(url, str) else url
        if ca_file is not None and not self.target.tls:
            raise ValueError("--mqtt-ca needs an mqtts:// URL (the CA checks the broker's TLS certificate)")
        if window < 1:
            raise ValueError("the MQTT window must be at least 1 message")
        # Built now so an unreadable or invalid CA file is an error at start, not a retried outage.
        try:
            self._tls = ssl.create_default_context(cafile=ca_file) if self.target.tls else None
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"MQTT CA file {ca_file}: {getattr(exc, 'strerror', None) or exc}"
                             " (allowed: a readable PEM file of CA certificates)") from None
        self.store = store
        self.window = window
        self.poll = poll
        self.retry = retry
        self.client_id = client_id or f"wmbus-hes-{os.getpid()}-{os.urandom(2).hex()}"
        self._report = report or log.warning
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._outage: str | None = None  # what made the broker unavailable, while it is
        self.published_count = 0  # readings whose PUBACK arrived and that left the outbox
        self.in_flight = 0  # readings published whose PUBACK has not arrived yet
        self.outages = 0  # times the broker became unavailable (or the publisher failed and started over)
        self.connected = False

    # -- the caller's side ---------------------------------------------------------------------

    def start(self) -> Publisher:
        """Start the publishing thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="hes-mqtt-publisher", daemon=True)
            self._thread.start()
        return self

    def wake(self) -> None:
        """Look at the outbox now (a commit added rows): cheap, never blocks."""
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop publishing: PUBACKs in flight get a moment, the rest stays in the outbox for the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> Publisher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        # An outage lasts until the broker acknowledges again (or has nothing to acknowledge):
        # a broker that accepts connections but drops each one at the first message is one
        # outage, logged once, and is retried with the growing delay, not twice a second.
        delay = self.retry[0]
        while not self._stop.is_set():
            try:
                client = self._connect()
            except _Down as down:
                if self._stop.is_set():
                    break
                self._down(f"unavailable: {down.reason}; readings wait in the outbox, retrying")
                self._stop.wait(delay)
                delay = min(delay * 2, self.retry[1])
                continue
            self.connected = True
            try:
                self._drain(client)
            except _Down as down:
                self._down(f"lost: {down.reason}; readings wait in the outbox, reconnecting")
            except Exception as exc:  # a bug must not end publication silently: say it, start over
                self._down(f"publisher failed: {exc!r}; readings wait in the outbox, starting over")
            finally:
                self.connected = False
                self._close(client)
            if self._outage is None:
                delay = self.retry[0]
            else:
                self._stop.wait(delay)
                delay = min(delay * 2, self.retry[1])

    def _down(self, what: str) -> None:
        """The broker is unavailable: said once per outage."""
        if self._outage is None:
            self._outage = what
            self.outages += 1
            self._report(f"MQTT broker {self.target.display} {what}")

    def _healthy(self) -> None:
        """The broker acknowledged (or had nothing to acknowledge): an outage, if any, is over."""
        if self._outage is not None:
            self._outage = None
            self._report(f"MQTT broker {self.target.display} reachable again; publishing the outbox")

    def _connect(self) -> Client:
        """A new client with its CONNACK received; a fresh one each time, so nothing paho queued is resent behind our back."""
        mqtt = self._mqtt
        client: Client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True,
                                     protocol=mqtt.MQTTv311, reconnect_on_failure=False)
        client.connect_timeout = CONNECT_SECONDS
        client.max_inflight_messages_set(self.window)
        if self.target.username is not None:
            client.username_pw_set(self.target.username, self.target.password)
        if self._tls is not None:
            client.tls_set_context(self._tls)
        answer: list[Any] = []
        client.on_connect = lambda _c, _u, _flags, reason, _props: answer.append(reason)
        try:
            client.connect(self.target.host, self.target.port, keepalive=30)
        except ssl.SSLError as exc:
            self._close(client)
            raise _Down(f"TLS: {exc.reason or exc}") from None
        except OSError as exc:
            self._close(client)
            raise _Down(exc.strerror or str(exc) or type(exc).__name__) from None
        except Exception as exc:  # paho's own checks (e.g. a host name it cannot encode)
            self._close(client)
            raise _Down(repr(exc)) from None
        deadline = time.monotonic() + CONNECT_SECONDS
        while not answer:
            rc = client.loop(_TICK)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                self._close(client)
                if answer:  # the CONNACK came, refusing (paho ends the loop with it): say its reason
                    raise _Down(f"the broker refused the connection: {answer[0]}")
                raise _Down(f"connection closed before CONNACK ({mqtt.error_string(rc)})")
            if self._stop.is_set() or time.monotonic() >= deadline:
                self._close(client)
                raise _Down(f"no CONNACK within {CONNECT_SECONDS:g} s")
        if answer[0].is_failure:
            self._close(client)
            raise _Down(f"the broker refused the connection: {answer[0]}")
        return client

    def _drain(self, client: Client) -> None:
        """Publish outbox rows in order until stopped, a sliding window of them in flight; raises _Down on a lost connection.

        The window is refilled when half of it was acknowledged, so the broker's PUBACKs
        (which a broker without TCP_NODELAY holds back a few ms) overlap the next messages.
        PUBACKed rows leave the outbox together, once per window or when nothing is in flight.
        """
        mqtt = self._mqtt
        acked: set[int] = set()  # message ids PUBACKed since last looked at
        client.on_publish = lambda _c, _u, mid, _reason, _props: acked.add(mid)
        in_flight: dict[int, int] = {}  # message id -> outbox id, in publishing order
        done: list[int] = []  # outbox ids PUBACKed, still in the outbox
        exhausted = False  # the last look found no more rows: wait for a wake() or the poll
        store_failed = False
        grace: float | None = None
        progress = time.monotonic()  # the last PUBACK, or when nothing was in flight
        try:
            while True:
                if acked:
                    for mid in [mid for mid in in_flight if mid in acked]:
                        done.append(in_flight.pop(mid))
                    acked.clear()
                    progress = time.monotonic()
                    self._healthy()
                elif not in_flight:
                    progress = time.monotonic()
                elif time.monotonic() - progress > ACK_SECONDS:
                    raise _Down(f"no PUBACK within {ACK_SECONDS:g} s for {len(in_flight)} messages in flight")
                self.in_flight = len(in_flight)
                if len(done) >= self.window or (done and not in_flight):
                    self._mark(done)
                    done = []
                if self._stop.is_set():
                    grace = grace if grace is not None else time.monotonic() + STOP_GRACE_SECONDS
                    if not in_flight or time.monotonic() >= grace:
                        return
                elif self._wake.is_set():
                    exhausted = False
                room = self.window - len(in_flight)
                if grace is None and not exhausted and (room >= self.window // 2 or not in_flight):
                    self._wake.clear()
                    try:
                        rows = self.store.pending(len(in_flight) + len(done) + room)
                    except Exception as exc:  # the database is gone for a moment; the rows are still there
                        if not store_failed:
                            self._report(f"MQTT publisher cannot read the outbox: {exc}; retrying")
                            store_failed = True
                        rows = None
                    else:
                        store_failed = False
                    if rows is not None:
                        taken = {*in_flight.values(), *done}
                        fresh = [row for row in rows if row.outbox_id not in taken][:room]
                        exhausted = len(fresh) < room
                        for publication in fresh:
                            info = client.publish(topic(self.target.prefix, publication.reading), payload(publication),
                                                  qos=1, retain=False)
                            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                                raise _Down(f"publish failed: {mqtt.error_string(info.rc)}")
                            in_flight[info.mid] = publication.outbox_id
                        self.in_flight = len(in_flight)
                    else:
                        exhausted = True
                if in_flight:
                    rc = client.loop(_TICK)
                    if rc != mqtt.MQTT_ERR_SUCCESS:
                        raise _Down(mqtt.error_string(rc))
                elif exhausted:
                    self._healthy()  # connected, and nothing waits to be published
                    self._idle(client, self.poll)
                    exhausted = False
        finally:
            done += [outbox_id for mid, outbox_id in in_flight.items() if mid in acked]
            self.in_flight = 0
            if done:
                self._mark(done)

    def _mark(self, outbox_ids: Sequence[int]) -> None:
        """Take PUBACKed rows out of the outbox; if that fails they stay and are published again (at least once)."""
        try:
            self.store.published(outbox_ids)
        except Exception as exc:
            self._report(f"MQTT publisher cannot remove {len(outbox_ids)} published rows from the outbox: {exc};"
                         " they will be published again")
            return
        self.published_count += len(outbox_ids)

    def _idle(self, client: Client, seconds: float) -> None:
        """Keep the connection alive (pings, a lost socket noticed) until woken, stopped or ``seconds`` pass."""
        mqtt = self._mqtt
        deadline = time.monotonic() + seconds
        while not self._wake.is_set() and time.monotonic() < deadline:
            rc = client.loop(_TICK)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                raise _Down(mqtt.error_string(rc))

    @staticmethod
    def _close(client: Client) -> None:
        """Say goodbye if still connected and release the client's sockets now rather than when it is collected."""
        with contextlib.suppress(Exception):  # a socket already gone: nothing left to say
            if client.is_connected():
                client.disconnect()
                client.loop(_TICK)
        client.on_connect = client.on_publish = None
        with contextlib.suppress(Exception):
            client._reset_sockets()  # paho's own cleanup of its socket and socket pair (its __del__ calls it)
