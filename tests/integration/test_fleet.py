"""Fleet management end to end: .cad sync from nginx, hostile servers and archives, power cuts,
configuration export/import/history/revert, backup on one gateway and restore on another.

Everything is real: the .cad server is nginx running the documented example
(``docs/examples/nginx-cad.conf``) over TLS with a test CA, results are POSTed to a Python
HTTP server on 127.0.0.1, gateways are ``python -m wmbus_stream run`` processes and every
command is the command line. A refused change is checked against a snapshot taken before
it: the configuration file (bytes, mtime, mode), every file of the state folder but the
live database, whose pending rows are compared instead, and a folder outside the gateway
that a hostile name aims at.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import re
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fleet_harness import (
    CadServer,
    free_port,
    Member,
    NotifyServer,
    hostile_compressions,
    hostile_databases,
    members_of,
    pending_rows,
    snapshot,
    start_cad_server,
    tar_bytes,
    tree,
)

from gwkit import (
    PROTOCOLS,
    Hes,
    SERIAL,
    ConfigFile,
    assert_report,
    pairs,
    run_cli,
    vector_telegrams,
    wait_for,
    with_id,
)
from wmbus_stream import __version__
from wmbus_stream.config import model
from wmbus_stream.config.manage import ConfigManager
from wmbus_stream.wire.header import manufacturer_letters

pytestmark = pytest.mark.integration

CMEX50 = PROTOCOLS["cmex50"]
TARGET = "/currentpluginconfig/stream.cfg"
ROOT = Path(__file__).resolve().parents[2]
MAKE_CAD = ROOT / "scripts" / "make-cad"


# -------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture
def cad(tmp_path: Path) -> Iterator[CadServer]:
    """nginx serving the documented example (plus test-only misbehaving servers)."""
    with start_cad_server(tmp_path / "nginx") as server:
        yield server


@pytest.fixture
def notify() -> Iterator[NotifyServer]:
    """The server receiving Sync-Notify-URL POSTs."""
    server = NotifyServer()
    try:
        yield server
    finally:
        server.close()


def fleet_config(config: ConfigFile, cad: CadServer, *also: str, **values: str) -> Path:
    """A gateway configuration that syncs from ``cad`` (schedule far away: syncs are run by hand);
    ``also``: URLs of other origins the owner allows (the result receiver, test-only servers)."""
    allowed = {"configuration.server.allow.origins": ",".join(re.match(r"https?://[^/]+", url).group(0) for url in also)}
    return config.write({
        **(allowed if also else {}),
        "sync.enabled": "true",
        "configuration.server.url": cad.url(),
        "configuration.server.ca.file": str(cad.ca_file),
        "configuration.server.cron": "0 0 1 1 *",
        "configuration.server.timeout": "3",
        **values,
    })


def cad_text(*lines: str, sync_id: str | None = None, notify_url: str | None = None, mode: str = "server") -> str:
    """A .cad file: the mode, the optional id and notification URL, then ``lines``."""
    head = [f"Sync-Mode: {mode}"]
    head += [f"Sync-Id: {sync_id}"] if sync_id else []
    head += [f"Sync-Notify-URL: {notify_url}"] if notify_url else []
    return "\n".join(head + list(lines)) + "\n"


def sync_now(config: ConfigFile, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return run_cli("sync", "now", "--config", str(config.path), timeout=timeout)


def cli(config: ConfigFile, *args: str) -> subprocess.CompletedProcess[bytes]:
    return run_cli("config", args[0], "--config", str(config.path), *args[1:], timeout=60)


def manufacturer(telegram: bytes) -> str:
    """The manufacturer letters as the filter compares them: the M-field's low 15 bits (bit 15 is no letter)."""
    return manufacturer_letters(int.from_bytes(telegram[2:4], "little") & 0x7FFF)


def expected_user_agent(serial: str) -> str:
    machine = re.sub(r"[^!-~]|[/;()]", "-", platform.machine()) or "unknown"
    return (f"TC65i/{serial} Profile/IMP-NG Configuration/CLDC-1.1 Model/wmbus-stream Hardware/{machine}"
            f" Firmware/{__version__} Application/{__version__} Serial/{serial}")


def config_value(path: Path, key: str) -> str:
    return model.load(path).get(key)


# -------------------------------------------------------------------------------------------
# A.7 #30: the happy path on a running gateway


def test_good_sync_reaches_the_running_gateway_keeps_pending_and_reports_900(
        config, pty_receiver, hes, gateway, cad, notify) -> None:
    """New filter used by the next push, pending telegrams kept, 900 + Sync-Id posted, idempotent."""
    telegrams = vector_telegrams(60)
    before, after = telegrams[:30], [with_id(t, 90000000 + n) for n, t in enumerate(telegrams[30:])]
    assert {manufacturer(t) for t in before} != {"APA"} and any(manufacturer(t) == "APA" for t in after)
    ca_text = cad.ca_file.read_bytes()
    cad.put("files/certs/hes-ca.pem", ca_text)
    cad.put_cad(SERIAL, cad_text(
        f"Sync-Config-0: filter.manufacturer=APA|{TARGET}",
        f"Sync-Config-1: receiving.server.retries=1|{TARGET}",
        f"Sync-File-0-URL: {cad.url('/files/certs/hes-ca.pem')},certs/hes-ca.pem",
        sync_id="happy-1", notify_url=notify.url))
    hes.down()  # telegrams stay pending until after the sync
    fleet_config(config, cad, notify.url, **{"receiver.port": str(pty_receiver.link), "receiving.server.url": hes.url})
    since = time.time()
    gw = gateway(config)
    gw.wait_connected()
    pty_receiver.write(b"".join(CMEX50.encode(t) for t in before))
    gw.wait_status(lambda s: s["meters_pending"] == len(before), "the first batch pending")

    result = sync_now(config)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"900\n", b"")
    [note] = notify.wait(1)
    assert note.body == b"900\nSync-Id: happy-1\n"
    assert note.headers["content-type"].startswith("text/plain")
    assert note.headers["user-agent"] == expected_user_agent(SERIAL)
    gets = [line for line in cad.access_log.read_text().splitlines() if "GET /gateway.cad " in line]
    assert len(gets) == 1 and f'"{expected_user_agent(SERIAL)}"' in gets[0] and '" 200 ' in gets[0]

    assert config_value(config.path, "filter.manufacturer") == "APA"
    assert config_value(config.path, "gateway.serial") == SERIAL  # everything else as it was
    assert (config.state / "files" / "certs" / "hes-ca.pem").read_bytes() == ca_text
    assert os.stat(config.path).st_mode & 0o777 == 0o600
    status = gw.wait_status(lambda s: s["sync"]["last"] and s["sync"]["last"]["code"] == 900, "the sync in status")
    assert status["meters_pending"] == len(before)  # nothing pending was lost by the reload

    # The new filter is in force: of the next batch, only APA meters are accepted.
    pty_receiver.write(b"".join(CMEX50.encode(t) for t in after))
    apa = [t for t in after if manufacturer(t) == "APA"]
    gw.wait_status(lambda s: s["meters_pending"] == len(before) + len(apa), "APA meters of the second batch")
    hes.up()
    posts = hes.wait_posts(1, timeout=15, context=gw.tail)
    gw.wait_status(lambda s: s["meters_pending"] == 0, "everything acknowledged")
    assert_report([line for post in hes.posts for line in post], pairs(CMEX50, before + apa), since=since)

    # A second identical sync writes nothing and still reports 900.
    mtimes = (os.stat(config.path).st_mtime_ns, os.stat(config.state / "files/certs/hes-ca.pem").st_mtime_ns)
    history = cli(config, "history").stdout
    result = sync_now(config)
    assert (result.returncode, result.stdout) == (0, b"900\n")
    assert notify.wait(2)[1].body == b"900\nSync-Id: happy-1\n"
    assert (os.stat(config.path).st_mtime_ns, os.stat(config.state / "files/certs/hes-ca.pem").st_mtime_ns) == mtimes
    assert cli(config, "history").stdout == history
    assert re.search(rb"\n +2 +\S+ \S+ +sync +Sync-Id happy-1\n", history), history
    assert len(posts) >= 1 and gw.alive()


# -------------------------------------------------------------------------------------------
# A.7 #31-#34: refused syncs change nothing


GOOD_CONFIG = f"Sync-Config-0: filter.manufacturer=ELV|{TARGET}"
NOTIFY_PLACEHOLDER = "http://127.0.0.1:9/placeholder"  # replaced by the test's result receiver


def hostile_cases(cad: CadServer) -> list[tuple[str, bytes, str]]:
    """(what, .cad content, expected result line as a regex). Each file also holds a valid key
    and a valid download, so an apply of anything at all would show."""
    good_file = f"Sync-File-0-URL: {cad.url('/files/small.txt')},small.txt"

    def with_file(url: str, local: str = "new.txt") -> bytes:
        return cad_text(GOOD_CONFIG, good_file, f"Sync-File-1-URL: {url},{local}", sync_id="hostile",
                        notify_url=NOTIFY_PLACEHOLDER).encode()

    def with_local(local: str) -> bytes:
        return with_file(cad.url("/files/small.txt"), local)

    def with_config(line: str) -> bytes:
        return cad_text(GOOD_CONFIG, f"Sync-Config-1: {line}", good_file, sync_id="hostile",
                        notify_url=NOTIFY_PLACEHOLDER).encode()

    return [
        # #31 wrong mode
        ("mode client", cad_text(GOOD_CONFIG, good_file, sync_id="hostile", notify_url=NOTIFY_PLACEHOLDER,
                                 mode="client").encode(), r"920 Sync-Mode is 'client', not 'server'"),
        ("mode missing", b"Sync-Id: hostile\nSync-Notify-URL: " + NOTIFY_PLACEHOLDER.encode() + b"\n"
         + GOOD_CONFIG.encode() + b"\n", r"920 Sync-Mode line missing"),
        # #32 path traversal
        ("../../etc/passwd", with_local("../../etc/passwd"), r"921 .*Sync-File-1-URL: '\.\.' in the local file name"),
        ("/etc/shadow", with_local("/etc/shadow"), r"921 .*Sync-File-1-URL: absolute local file name"),
        ("a/../../b", with_local("a/../../b"), r"921 .*'\.\.' in the local file name"),
        ("..\\x", with_local("..\\x"), r"921 .*backslash in the local file name"),
        ("%2e%2e/x", with_local("%2e%2e/x"), r"921 .*percent-encoded characters in the local file name"),
        ("NUL byte", with_local("x\0y"), r"921 line \d+: control character U\+0000"),
        ("symlinked folder", with_local("evil/x.txt"), r"921 Sync-File-1-URL: evil/x.txt: evil is a symbolic link"),
        ("symlinked file", with_local("link.txt"), r"921 Sync-File-1-URL: link.txt: link.txt is a symbolic link"),
        # #34 download abuse
        ("huge download", with_file(cad.url("/files/huge.bin")),
         r"921 Sync-File-1-URL: download failed: GET https://127\.0\.0\.1:\d+/files/huge\.bin: file of 1048577 bytes"
         r" exceeds the limit of 1048576"),
        ("slow server", with_file(cad.extra_url("/slow/drip.bin")),
         r"921 Sync-File-1-URL: download failed: GET https://127\.0\.0\.1:\d+/slow/drip\.bin: total time limit"
         r" exceeded"),
        ("redirect to http", with_file(cad.extra_url("/to-http")), r"921 .*redirect from https to http refused"),
        ("redirect loop", with_file(cad.extra_url("/loop")), r"921 .*more than 5 redirects"),
        ("redirect to file:", with_file(cad.extra_url("/file-scheme")), r"921 .*redirect refused"),
        ("404", with_file(cad.url("/files/missing.bin")), r"921 .*HTTP 404"),
        ("file: scheme", with_file("file:///etc/passwd"), r"921 line \d+: Sync-File-1-URL: URL 'file:///etc/passwd'"
                                                          r" refused"),
        ("plain http", with_file(f"http://127.0.0.1:{cad.plain_port}/files/small.txt"),
         r"921 Sync-File-1-URL: plain http download refused \(the \.cad file came over https\)"),
        ("untrusted certificate", with_file(f"https://127.0.0.1:{cad.untrusted_port}/files/small.txt"),
         r"921 .*certificate"),
        ("certificate for another host", with_file(f"https://127.0.0.1:{cad.wrong_name_port}/files/small.txt"),
         r"921 .*certificate"),
        ("oversized .cad", cad_text(GOOD_CONFIG, *[f"# {'x' * 1000}"] * 70).encode(),
         r"921 cannot fetch the \.cad file: .*exceeds the limit of 65536"),
        # #33 configuration injection
        ("target /etc/passwd", with_config("filter.device.id=12345678|/etc/passwd"),
         r"921 line \d+: Sync-Config-1: target '/etc/passwd' is not allowed \(only /currentpluginconfig/stream\.cfg\)"),
        ("target with ..", with_config(f"radio.mode=T1|{TARGET}/../../../etc/passwd"), r"921 .*is not allowed"),
        ("unknown key", with_config(f"evil.key=1|{TARGET}"), r"921 .*unknown configuration key 'evil\.key'"),
        ("serial", with_config(f"gateway.serial=12345678|{TARGET}"), r"921 .*gateway\.serial cannot be set"),
        ("state directory", with_config(f"state.directory=/etc|{TARGET}"), r"921 .*state\.directory cannot be set"),
        ("value with LF", with_config(f"filter.device.id=12345678\nreceiving.server.url=http://evil.example/|{TARGET}"),
         r"921 line \d+: expected 'Name: value', got 'receiving\.server\.url=http://evil\.example/\|"),
        ("value with CR", with_config(f"filter.device.id=12345678\rreceiving.server.url=http://evil/|{TARGET}"),
         r"921 line \d+: carriage return inside the line"),
        ("value with U+2028", with_config(f"filter.device.id=12345678\u2028log.level=debug|{TARGET}"),
         r"921 line \d+: control character U\+2028"),
        ("formula cell", with_config(f"filter.device.id==HYPERLINK(\"http://evil.example\")|{TARGET}"),
         r"921 .*filter\.device\.id: invalid value"),
        ("invalid value", with_config(f"usb.baud.rate=12345|{TARGET}"),
         r"921 .*usb\.baud\.rate: invalid value '12345'"),
        ("cross-key", with_config(f"configuration.server.url=|{TARGET}"), r"921 .*configuration\.server\.url"),
        ("numbering gap", cad_text(GOOD_CONFIG, f"Sync-Config-2: radio.mode=T1|{TARGET}", sync_id="hostile",
                                   notify_url=NOTIFY_PLACEHOLDER).encode(), r"921 .*Sync-Config-1 is missing"),
        # the trust model: keys that decide where data and credentials go, who may log in, what
        # is listened on and what is trusted are the owner's (none is allowed on this gateway)
        *[(f"owner-only {line.split('=')[0]}", with_config(f"{line}|{TARGET}"),
           rf"921 line \d+: Sync-Config-1: {re.escape(line.split('=')[0])} is an owner-only key: a sync may set it only"
           r" when this gateway's owner lists it in configuration\.server\.allow\.keys")
          for line in ("receiving.server.url=http://127.0.0.1:9/x", "receiving.server.username=evil",
                       "receiving.server.password=evil", "web.listen=0.0.0.0:8080", "web.enabled=true",
                       "web.metrics.public=true", "web.tls.cert=/tmp/evil.pem",
                       "configuration.server.ca.file=/tmp/evil-ca.pem", "receiving.server.ca.file=/tmp/evil-ca.pem",
                       "configuration.server.url=https://evil.example/x", "configuration.server.cron=* * * * *",
                       "sync.enabled=false", "receiver.port=/etc/passwd", "receiver.port=socket://127.0.0.1:9",
                       "receiver.protocol=simulator")],
        *[(f"local-only {key}", with_config(f"{key}={value}|{TARGET}"),
           rf"921 line \d+: Sync-Config-1: {re.escape(key)} cannot be set by a configuration server")
          for key, value in (("configuration.server.allow.keys", "receiver.port"),
                             ("configuration.server.allow.http", "true"),
                             ("configuration.server.allow.origins", "*"))],
        # downloads go only to the configuration server's origin and those the owner listed
        ("another origin", with_file("https://127.0.0.1:9/files/small.txt"),
         r"921 Sync-File-1-URL: download failed: GET https://127\.0\.0\.1:9/files/small\.txt: refused:"
         r" https://127\.0\.0\.1:9 is not an allowed origin"),
        ("user info in a download", with_file(cad.url("/files/small.txt").replace("://", "://admin:admin@")),
         r"921 line \d+: Sync-File-1-URL: URL 'https://admin:\*+@127\.0\.0\.1:\d+/files/small\.txt' refused:"
         r" user:password@ is not allowed"),
        ("redirect to another origin", with_file(cad.extra_url("/bounce?to=https://127.0.0.1:9/x")),
         r"921 Sync-File-1-URL: download failed: GET https://127\.0\.0\.1:9/x: refused: https://127\.0\.0\.1:9 is"
         r" not an allowed origin"),
    ]


def test_hostile_syncs_are_refused_with_921_and_change_nothing(
        tmp_path, config, pty_receiver, gateway, cad, notify) -> None:
    """A.7 #31-#34 on a running gateway with pending telegrams: every case is refused, reported
    with a clear reason to the server, and the configuration, the state and the folder a link
    points to are exactly as before."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("not the gateway's\n")
    files = config.state / "files"
    files.mkdir(parents=True, mode=0o700)
    (files / "evil").symlink_to(outside)
    (files / "link.txt").symlink_to(outside / "victim.txt")
    cad.put("files/small.txt", "small\n")
    cad.put("files/huge.bin", b"\0" * (1024 * 1024 + 1))
    # No HES: everything stays pending. The owner allows the result receiver and the test-only
    # servers, whose certificates are still checked.
    fleet_config(config, cad, notify.url, cad.extra_url("/"), cad.origin(cad.untrusted_port),
                 cad.origin(cad.wrong_name_port), **{"receiver.port": str(pty_receiver.link)})
    gw = gateway(config)
    gw.wait_connected()
    telegrams = vector_telegrams(20)
    pty_receiver.write(b"".join(CMEX50.encode(t) for t in telegrams))
    wait_for(lambda: len(pending_rows(config.state)) == len(telegrams), "telegrams pending on disk")

    before = snapshot(config, outside)
    failures = []
    for what, content, expected in hostile_cases(cad):
        cad.put_cad(SERIAL, content.replace(NOTIFY_PLACEHOLDER.encode(), notify.url.encode()))
        heard = len(notify.all())
        try:  # configuration.server.timeout=3, plus the command's own start
            result = sync_now(config, timeout=3 + 5)
        except subprocess.TimeoutExpired:
            failures.append(f"{what}: still running after 8 s (configuration.server.timeout=3)")
            continue
        line = result.stdout.decode(errors="replace").rstrip("\n")
        if result.returncode != 1 or not re.fullmatch(expected + ".*", line) or "\n" in line:
            failures.append(f"{what}: exit {result.returncode}, {line!r} does not match {expected!r}")
        difference = before.diff(snapshot(config, outside))
        if difference:
            failures.append(f"{what}: changed {difference}")
        if what != "oversized .cad":  # the others were read far enough to know where to report
            bodies = [n.body for n in notify.all()[heard:]]
            if bodies != [f"{line}\nSync-Id: hostile\n".encode()]:
                failures.append(f"{what}: notified {bodies}")
    assert not failures, "\n".join(failures)
    assert gw.status()["sync"]["runs"] == {"ok": 0, "failed": len(hostile_cases(cad))}
    assert gw.alive()


def test_cad_server_with_a_certificate_the_gateway_does_not_trust_is_refused(tmp_path, cad) -> None:
    """A.7 #34: the .cad file itself behind an untrusted certificate or one for another host."""
    cad.put_cad(SERIAL, cad_text(GOOD_CONFIG))
    for port in (cad.untrusted_port, cad.wrong_name_port):
        config = ConfigFile(tmp_path / f"gw-{port}")
        config.path.parent.mkdir()
        fleet_config(config, cad, **{"configuration.server.url": f"https://127.0.0.1:{port}/gateway.cad"})
        assert cli(config, "history").returncode == 0  # the state folder exists, as on a gateway in service
        before = snapshot(config)
        result = sync_now(config)
        assert result.returncode == 1
        assert re.fullmatch(rb"921 cannot fetch the \.cad file: GET https://127\.0\.0\.1:\d+/gateway\.cad: TLS verify"
                            rb" failed: .*(unable to get local issuer certificate|not valid for '127\.0\.0\.1').*\n",
                            result.stdout), result.stdout
        assert not before.diff(snapshot(config))


# -------------------------------------------------------------------------------------------
# The trust model: a configuration server is not trusted with the keys to the kingdom


def last_line(result: subprocess.CompletedProcess[bytes]) -> str:
    """The result line ``sync now`` printed (one line, nothing else on standard output)."""
    assert result.stdout.count(b"\n") == 1, result.stdout
    return result.stdout.decode().rstrip("\n")


def test_a_hostile_server_gets_neither_the_hes_credentials_nor_the_meter_data(
        config, pty_receiver, gateway, cad, notify) -> None:
    """The issue's first attack on a running gateway: a .cad holding only a new push URL is
    refused (921) while the key is the owner's; once the owner allows the key, it is still
    refused because the local credentials belong to the real HES's origin. Configuration and
    pending rows stay byte for byte; the real HES then gets everything, the attacker nothing."""
    real, attacker = Hes(username="gw", password="hes-secret"), Hes()
    try:
        real.down()
        fleet_config(config, cad, notify.url, **{"receiver.port": str(pty_receiver.link), "receiving.server.url": real.url,
                                                 "receiving.server.username": "gw",
                                                 "receiving.server.password": "hes-secret"})
        gw = gateway(config)
        gw.wait_connected()
        telegrams = vector_telegrams(12)
        pty_receiver.write(b"".join(CMEX50.encode(t) for t in telegrams))
        wait_for(lambda: len(pending_rows(config.state)) == len(telegrams), "telegrams pending on disk")
        cad.put_cad(SERIAL, cad_text(f"Sync-Config-0: receiving.server.url={attacker.url}|{TARGET}", sync_id="attack",
                                     notify_url=notify.url))
        refusals = [
            r"921 line 4: Sync-Config-0: receiving\.server\.url is an owner-only key: a sync may set it only when"
            r" this gateway's owner lists it in configuration\.server\.allow\.keys",
            rf"921 line 4: Sync-Config-0: receiving\.server\.url moves the push to http://127\.0\.0\.1:{attacker.port},"
            r" but receiving\.server\.username and receiving\.server\.password belong to"
            rf" http://127\.0\.0\.1:{real.port}: credentials are never sent to another origin .*",
        ]
        for number, expected in enumerate(refusals, 1):
            if number == 2:  # the owner lets the fleet server move the push
                assert cli(config, "set", "configuration.server.allow.keys=receiving.server.url").returncode == 0
            before = snapshot(config)
            result = sync_now(config)
            line = last_line(result)
            assert result.returncode == 1 and re.fullmatch(expected, line), line
            assert notify.wait(number)[-1].body == f"{line}\nSync-Id: attack\n".encode()
            assert not before.diff(snapshot(config))
        assert config_value(config.path, "receiving.server.url") == real.url
        real.up()
        real.wait_posts(1, timeout=15, context=gw.tail)
        gw.wait_status(lambda s: s["meters_pending"] == 0, "everything acknowledged by the real HES")
        assert attacker.posts == [] and gw.alive()
    finally:
        real.close()
        attacker.close()


def test_sync_over_plain_http_is_refused_unless_the_owner_allows_it(tmp_path, cad) -> None:
    """Anyone on the path could play a plain http server: no request is even made until the
    owner sets configuration.server.allow.http=true."""
    cad.put("gateway.cad", cad_text(GOOD_CONFIG))
    config = ConfigFile(tmp_path / "gw")
    config.path.parent.mkdir()
    fleet_config(config, cad, **{"configuration.server.url": f"http://127.0.0.1:{cad.plain_port}/gateway.cad"})
    assert cli(config, "history").returncode == 0
    before = snapshot(config)
    result = sync_now(config)
    assert result.returncode == 1 and last_line(result) == (
        "921 configuration.server.url is plain http://, where anyone on the path can play the configuration server:"
        " use https:// (or the owner sets configuration.server.allow.http=true)")
    assert not before.diff(snapshot(config))
    assert not cad.plain_log.exists() or "gateway.cad" not in cad.plain_log.read_text()
    assert cli(config, "set", "configuration.server.allow.http=true").returncode == 0
    assert sync_now(config).stdout == b"900\n"
    assert config_value(config.path, "filter.manufacturer") == "ELV"


def test_a_ca_file_a_sync_points_at_must_be_a_usable_ca_bundle(tmp_path, cad) -> None:
    """Even with the owner's leave to set both CA keys, a sync pointing one at a file that is no
    CA bundle is refused before anything is applied; a real bundle is taken, and later syncs work."""
    cad.put("files/junk.pem", "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    cad.put("files/ca.pem", cad.ca_file.read_bytes())
    config = ConfigFile(tmp_path / "gw")
    config.path.parent.mkdir()
    fleet_config(config, cad, **{"configuration.server.allow.keys":
                                 "configuration.server.ca.file,receiving.server.ca.file"})
    assert cli(config, "history").returncode == 0
    target = config.state / "files" / "certs" / "ca.pem"
    for key in ("configuration.server.ca.file", "receiving.server.ca.file"):
        cad.put_cad(SERIAL, cad_text(f"Sync-Config-0: {key}={target}|{TARGET}",
                                     f"Sync-File-0-URL: {cad.url('/files/junk.pem')},certs/ca.pem"))
        before = snapshot(config)
        result = sync_now(config)
        assert result.returncode == 1 and re.fullmatch(
            rf"921 not applied: {re.escape(key)}: invalid value '{re.escape(str(target))}'; allowed: an absolute path"
            r" to a usable PEM file of CA certificates \(no usable CA certificate in it .*\)", last_line(result))
        assert not before.diff(snapshot(config))
    cad.put_cad(SERIAL, cad_text(f"Sync-Config-0: configuration.server.ca.file={target}|{TARGET}",
                                 f"Sync-Config-1: receiving.server.ca.file={target}|{TARGET}",
                                 f"Sync-File-0-URL: {cad.url('/files/ca.pem')},certs/ca.pem"))
    assert sync_now(config).stdout == b"900\n"
    assert config_value(config.path, "configuration.server.ca.file") == str(target)
    assert sync_now(config).stdout == b"900\n"  # the new CA file verifies the server


def test_sync_requests_never_reach_hosts_the_owner_did_not_allow(tmp_path, config, pty_receiver, gateway, cad,
                                                                   notify) -> None:
    """SSRF: downloads, redirects and the notification to the gateway's own web UI port are
    refused and never reach it; user:password@ guesses are refused; the notification says what
    failed in the gateway's words, without another server's answer and without telling a
    refused connection from a silent one."""
    web_port = free_port()
    victim = NotifyServer()  # what listens on a port the owner did not allow
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections (the kernel's backlog) and never answers
    closed = free_port()
    try:
        fleet_config(config, cad, notify.url, cad.extra_url("/"), f"https://127.0.0.1:{silent.getsockname()[1]}",
                     f"https://127.0.0.1:{closed}",
                     **{"receiver.port": str(pty_receiver.link), "web.enabled": "true",
                        "web.listen": f"127.0.0.1:{web_port}"})
        gw = gateway(config)
        gw.wait_connected()
        victim_url = victim.url.rsplit("/", 1)[0]
        victim_origin = re.escape(victim_url.replace("http://", "https://"))
        cases = [
            (f"Sync-File-0-URL: https://127.0.0.1:{web_port}/api/status,x.txt",
             rf"921 Sync-File-0-URL: download failed: GET https://127\.0\.0\.1:{web_port}/api/status: refused:"
             rf" https://127\.0\.0\.1:{web_port} is not an allowed origin .*"),
            (f"Sync-File-0-URL: {victim_url.replace('http://', 'https://')}/x,x.txt",
             rf"921 Sync-File-0-URL: download failed: GET {victim_origin}/x: refused: {victim_origin} is not an"
             r" allowed origin .*"),
            (f"Sync-File-0-URL: https://admin:admin@127.0.0.1:{web_port}/api/config,x.txt",
             r"921 line \d+: Sync-File-0-URL: URL 'https://admin:\*+@127\.0\.0\.1:\d+/api/config' refused:"
             r" user:password@ is not allowed .*"),
            (f"Sync-File-0-URL: {cad.extra_url('/bounce?to=' + victim_url.replace('http://', 'https://') + '/x')},x.txt",
             rf"921 Sync-File-0-URL: download failed: GET {victim_origin}/x: refused: {victim_origin} is not an"
             r" allowed origin .*"),
            (f"Sync-File-0-URL: {cad.extra_url('/secret')},x.txt",
             r"921 Sync-File-0-URL: download failed: GET https://127\.0\.0\.1:\d+/secret: HTTP 403"),
        ]
        before = snapshot(config)
        for number, (line, expected) in enumerate(cases, 1):
            cad.put_cad(SERIAL, cad_text(line, sync_id="ssrf", notify_url=notify.url))
            result = sync_now(config)
            text = last_line(result)
            assert result.returncode == 1 and re.fullmatch(expected, text), text
            assert notify.wait(number)[-1].body == f"{text}\nSync-Id: ssrf\n".encode()
        assert b"private page" not in b"".join(n.body for n in notify.all())
        # A refused connection and a silent server read alike.
        answers = []
        for port in (closed, silent.getsockname()[1]):
            cad.put_cad(SERIAL, cad_text(f"Sync-File-0-URL: https://127.0.0.1:{port}/f,x.txt", sync_id="ssrf",
                                         notify_url=notify.url))
            answers.append(last_line(sync_now(config)).replace(str(port), "PORT"))
        assert answers[0] == answers[1] == ("921 Sync-File-0-URL: download failed: GET https://127.0.0.1:PORT/f: no"
                                            " answer (cannot connect, or the connection failed or timed out)")
        assert not before.diff(snapshot(config))
        # The notification goes nowhere the owner did not allow either.
        cad.put_cad(SERIAL, cad_text(GOOD_CONFIG, sync_id="ssrf", notify_url=victim.url))
        result = sync_now(config)
        assert result.stdout == b"900\n" and b"is not an allowed origin" in result.stderr
        assert victim.all() == [] and gw.alive()
    finally:
        victim.close()
        silent.close()


# -------------------------------------------------------------------------------------------
# A.7 #26 for a sync: power cut (kill -9) while it is applied


# Runs the real command line with a kill -9 of itself at one named step of the transaction
# (``journal.step_hook`` exists for this): a power cut at an exact instant.
KILL_AT_STEP = """
import os, signal, sys
from wmbus_stream import journal
from wmbus_stream.cli import main

def cut(name: str) -> None:
    if name == sys.argv[1]:
        os.kill(os.getpid(), signal.SIGKILL)

journal.step_hook = cut
sys.exit(main(sys.argv[2:]))
"""
STEPS = ("staged", "committed", "removed", "moved 0", "moved 2", "configuration written", "history recorded", "done")
DOWNLOADS = 3


def leftovers(config: ConfigFile) -> list[str]:
    """Temporary files, staging folders or a journal an interrupted change left behind."""
    found = [p.name for p in config.path.parent.glob(".*.wmbus-tmp")]
    for _folder, dirs, names in os.walk(config.state):
        found += [n for n in dirs + names
                  if n.startswith(".stage-") or n.endswith(".wmbus-tmp") or n == "config.journal"]
    return found


def test_kill_9_while_a_sync_is_applied_leaves_the_old_or_the_new_configuration(tmp_path, cad) -> None:
    """At each step of the transaction and at random instants: the file is always the old or the
    new one and parses; after the next start, configuration and files are all old or all new."""
    contents = {f"fw/part{n}.bin": random.randbytes(1024 * 1024) for n in range(DOWNLOADS)}
    for name, data in contents.items():
        cad.put(f"files/{name}", data)
    cad.put_cad(SERIAL, cad_text(f"Sync-Config-0: filter.manufacturer=APA|{TARGET}",
                                 *(f"Sync-File-{n}-URL: {cad.url('/files/' + name)},{name}"
                                   for n, name in enumerate(contents)), sync_id="power"))
    config = ConfigFile(tmp_path / "gw")
    config.path.parent.mkdir()

    def fresh() -> bytes:
        if config.state.exists():
            subprocess.run(["rm", "-rf", str(config.state)], check=True)
        fleet_config(config, cad)
        return config.path.read_bytes()

    def check(outcome: str) -> str:
        """Checks after the cut and after recovery; returns 'old' or 'new'."""
        text = config.path.read_bytes()
        assert text in (old, new), f"{outcome}: half-written configuration {text!r}"
        model.loads(text.decode())
        ConfigManager(config.path, config.state)  # what the next start does first: complete or undo
        text = config.path.read_bytes()
        files = {name: (config.state / "files" / name).read_bytes() for name in contents
                 if (config.state / "files" / name).exists()}
        syncs = [e for e in ConfigManager(config.path, config.state).history() if e.origin == "sync"]
        if text == new:
            assert files == contents and len(syncs) == 1, f"{outcome}: new configuration without all its files"
        else:
            assert text == old and files == {} and syncs == [], f"{outcome}: old configuration, new files {list(files)}"
        assert leftovers(config) == [], f"{outcome}: left behind {leftovers(config)}"
        return "new" if text == new else "old"

    old = fresh()
    started = time.monotonic()
    assert sync_now(config).stdout == b"900\n"
    full_run = time.monotonic() - started
    new = config.path.read_bytes()
    assert new != old and check("uninterrupted") == "new"

    for step in STEPS:
        fresh()
        run = subprocess.run([sys.executable, "-c", KILL_AT_STEP, step, "sync", "now", "--config", str(config.path)],
                             capture_output=True, timeout=60)
        assert run.returncode == -signal.SIGKILL, f"no kill at step {step!r}: {run.stdout!r} {run.stderr!r}"
        assert check(f"kill at {step}") == ("old" if step == "staged" else "new")

    # Random instants around the end of a run, where the apply is (the start is mostly Python's).
    outcomes = {"old": 0, "new": 0}
    for _ in range(6):  # a number of rounds, not a time: a loaded machine runs fewer in a given time
        fresh()
        delay = random.uniform(0.5, 1.05) * full_run
        process = subprocess.Popen([sys.executable, "-m", "wmbus_stream", "sync", "now", "--config", str(config.path)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        outcomes[check(f"kill after {delay:.3f} s")] += 1
    assert sum(outcomes.values()) == 6, outcomes


# -------------------------------------------------------------------------------------------
# Backup on one gateway, restore on its replacement


def test_backup_restored_on_a_replacement_gateway_pushes_everything_pending(
        tmp_path, config, pty_receiver, hes, gateway, cad) -> None:
    """The old gateway's pending telegrams reach the HES from the new one, under the new serial;
    --replace-serial takes the old serial too."""
    telegrams = vector_telegrams(25)
    cad.put("files/certs/hes-ca.pem", "ca\n")
    cad.put_cad(SERIAL, cad_text(f"Sync-Config-0: receiving.server.retries=1|{TARGET}",
                                 f"Sync-File-0-URL: {cad.url('/files/certs/hes-ca.pem')},certs/hes-ca.pem"))
    hes.down()
    fleet_config(config, cad, **{"receiver.port": str(pty_receiver.link), "receiving.server.url": hes.url,
                                 "receiving.server.password": "old-secret"})
    old = gateway(config)
    old.wait_connected()
    assert sync_now(config).stdout == b"900\n"  # a downloaded file and a history entry to carry over
    since = time.time()
    pty_receiver.write(b"".join(CMEX50.encode(t) for t in telegrams))
    old.wait_status(lambda s: s["meters_pending"] == len(telegrams), "telegrams pending")
    archive = tmp_path / "old.backup"
    result = cli(config, "backup", str(archive))
    assert result.returncode == 0, result.stderr
    assert os.stat(archive).st_mode & 0o777 == 0o600
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert names == ["manifest.json", "stream.cfg", "store.sqlite", "history.sqlite", "files/certs/hes-ca.pem"]
    old.stop()

    # The replacement: its own serial, its own (empty) state folder, the same HES.
    new = ConfigFile(tmp_path / "replacement")
    new.path.parent.mkdir()
    new.write({"gateway.serial": "00000999", "receiver.port": str(pty_receiver.link), "receiving.server.url": hes.url})
    hes.up()
    replacement = gateway(new)
    result = cli(new, "restore", str(archive))
    assert result.returncode == 0, result.stderr
    assert b"restored the backup of gateway 00000161" in result.stdout and b"serial 00000999 (kept)" in result.stdout
    hes.wait_posts(1, timeout=15, context=replacement.tail)
    replacement.wait_status(lambda s: s["meters_pending"] == 0, "the restored telegrams acknowledged")
    assert_report(hes.lines(), pairs(CMEX50, telegrams), since=since, serial="00000999")
    restored = model.load(new.path)
    assert restored.gateway_serial == "00000999" and restored.state_directory == new.state
    assert restored.push_password == "old-secret" and restored.sync_url == cad.url()
    assert (new.state / "files" / "certs" / "hes-ca.pem").read_text() == "ca\n"
    assert [e.origin for e in ConfigManager(new.path, new.state).history()] == ["restore", "sync", "local"]
    replacement.stop()

    # Restored with no gateway running, taking the old serial: used at the next start.
    third = ConfigFile(tmp_path / "third")
    third.path.parent.mkdir()
    third.write({"gateway.serial": "00000777"})
    result = cli(third, "restore", str(archive), "--replace-serial")
    assert result.returncode == 0, result.stderr
    assert model.load(third.path).gateway_serial == SERIAL and model.load(third.path).state_directory == third.state
    assert len(pending_rows(third.state)) == len(telegrams)


def hostile_archives(genuine: bytes) -> list[tuple[str, bytes, str]]:
    """(what, archive, expected problem as a regex) built from a genuine backup."""
    members = members_of(genuine)
    manifest = json.loads(members[0].data)
    evil_cfg = members[1].data + b"receiving.server.url=ftp://evil.example/\n"
    manifest["members"]["stream.cfg"] = {"size": len(evil_cfg), "sha256": hashlib.sha256(evil_cfg).hexdigest()}
    consistent_evil = [Member("manifest.json", json.dumps(manifest).encode()), Member("stream.cfg", evil_cfg),
                       *members[2:]]

    def plus(*extra: Member) -> bytes:
        return tar_bytes(members + list(extra))

    return [
        ("'..' member", plus(Member("../evil.cfg", b"x")), r"member \.\./evil\.cfg: '\.\.' in the name"),
        ("'..' inside files/", plus(Member("files/../../../etc/cron.d/x", b"x")), r"'\.\.' in the name"),
        ("absolute member", plus(Member("/etc/cron.d/evil", b"* * * * * root sh\n")),
         r"member /etc/cron\.d/evil: absolute name"),
        ("symbolic link", plus(Member("files/link", kind=tarfile.SYMTYPE, link="/etc/passwd")),
         r"member files/link: symbolic link \(to '/etc/passwd'\)"),
        ("hard link", tar_bytes([members[0], Member("stream.cfg", kind=tarfile.LNKTYPE, link="/etc/shadow"),
                                 *members[2:]]), r"member stream\.cfg: hard link \(to '/etc/shadow'\)"),
        ("character device", plus(Member("files/null", kind=tarfile.CHRTYPE)), r"member files/null: device file"),
        ("block device", plus(Member("files/sda", kind=tarfile.BLKTYPE)), r"member files/sda: device file"),
        ("FIFO", plus(Member("files/fifo", kind=tarfile.FIFOTYPE)), r"member files/fifo: FIFO"),
        ("oversize member", plus(Member("files/big.bin", size=1024 * 1024 + 1)),
         r"member files/big\.bin: 1048577 bytes, more than the limit of 1048576"),
        ("unknown member", plus(Member("etc/passwd", b"x")),
         r"member etc/passwd: not a member of a wmbus-stream backup"),
        ("altered configuration", tar_bytes([members[0], Member("stream.cfg", evil_cfg), *members[2:]]),
         r"member stream\.cfg: checksum mismatch"),
        ("invalid configuration", tar_bytes(consistent_evil),
         r"member stream\.cfg: receiving\.server\.url: invalid value 'ftp://evil\.example/'"),
        ("no manifest", tar_bytes(members[1:]), r"manifest\.json missing"),
        ("not a tar", b"MZ\x90\x00 not an archive",
         r"not a tar archive \(it starts with the bytes 4d 5a 90 00\); a wmbus-stream backup is a gzip-compressed tar"),
    ]


def test_hostile_backups_are_refused_and_change_nothing(tmp_path, config, pty_receiver, gateway, cad) -> None:
    """A.7 #37: links, devices, '..', absolute names, oversize members, altered or invalid content,
    other compressions, decompression bombs, databases that are not the gateway's (triggers,
    views, other tables or columns): every problem named, exit 3, and the running gateway's
    configuration and state as before."""
    outside = tmp_path / "outside"
    outside.mkdir()
    fleet_config(config, cad, **{"receiver.port": str(pty_receiver.link)})
    gw = gateway(config)
    gw.wait_connected()
    telegrams = vector_telegrams(15)
    pty_receiver.write(b"".join(CMEX50.encode(t) for t in telegrams))
    wait_for(lambda: len(pending_rows(config.state)) == len(telegrams), "telegrams pending on disk")
    genuine = tmp_path / "genuine.backup"
    assert cli(config, "backup", str(genuine)).returncode == 0
    assert cli(config, "set", "filter.manufacturer=ELV").returncode == 0  # history #2: the state differs

    before = snapshot(config, outside)
    failures = []
    cases = (hostile_archives(genuine.read_bytes()) + hostile_compressions(genuine.read_bytes())
             + hostile_databases(genuine.read_bytes(), tmp_path))
    for what, archive, expected in cases:
        path = tmp_path / "hostile.backup"
        path.write_bytes(archive)
        result = cli(config, "restore", str(path))
        errors = result.stderr.decode(errors="replace")
        if result.returncode != 3 or not re.search(expected, errors) or "nothing was changed" not in errors:
            failures.append(f"{what}: exit {result.returncode}, {errors!r} lacks {expected!r}")
        difference = before.diff(snapshot(config, outside))
        if difference:
            failures.append(f"{what}: changed {difference}")
    assert not failures, "\n".join(failures)
    assert tree(outside) == {} and gw.alive()
    assert gw.status()["meters_pending"] == len(telegrams)


def test_a_restore_upload_is_read_without_holding_the_configuration_lock(
        tmp_path, config, pty_receiver, gateway, cad) -> None:
    """Issue #8: the lock was held while the archive arrived (and was decompressed): a slow
    upload on the control socket blocked every change. Now `config set` goes through meanwhile,
    and its own recovery leaves the restore's staging folder alone."""
    fleet_config(config, cad, **{"receiver.port": str(pty_receiver.link)})
    gw = gateway(config)
    gw.wait_connected()
    genuine = tmp_path / "genuine.backup"
    assert cli(config, "backup", str(genuine)).returncode == 0
    data = genuine.read_bytes()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock, sock.makefile("rb") as answers:
        sock.settimeout(60)
        sock.connect(str(config.state / "control.sock"))
        sock.sendall(f"restore {len(data)} keep\n".encode() + data[:len(data) // 2])
        wait_for(lambda: any(p.name.startswith(".stage-") for p in config.state.iterdir()),
                 "the gateway reading the upload into its staging folder")
        result = cli(config, "set", "filter.manufacturer=ELV")  # blocked until the 60 s timeout before
        assert result.returncode == 0, result.stderr
        assert model.load(config.path).filter_manufacturer == ("ELV",)
        sock.sendall(data[len(data) // 2:])
        answer = json.loads(answers.readline())
    assert answer.get("ok"), answer
    # The restore came last: the backup's configuration and history, then its own entry.
    assert ConfigManager(config.path, config.state).history()[0].origin == "restore"
    assert model.load(config.path).filter_manufacturer != ("ELV",)
    assert not [p.name for p in config.state.iterdir() if p.name.startswith(".stage-")]


# -------------------------------------------------------------------------------------------
# Configuration management from the command line


def test_export_import_history_revert_between_two_gateways(tmp_path, config, pty_receiver, gateway, cad) -> None:
    """Export leaves out what belongs to one device; import into a running gateway keeps its own;
    an invalid import changes nothing; every change is in the history and can be reverted."""
    source = ConfigFile(tmp_path / "source")
    source.path.parent.mkdir()
    fleet_config(source, cad, **{"filter.manufacturer": "ELV,KAM", "radio.mode": "T1",
                                 "receiving.server.url": "https://gw:pw@hes.example.net/in",
                                 "receiving.server.password": "s3cret-161"})
    exported = tmp_path / "fleet.cfg"
    result = cli(source, "export", str(exported))
    assert result.returncode == 0, result.stderr
    text = exported.read_text()
    for absent in ("gateway.serial", "receiver.address", "receiving.server.password", "state.directory", "s3cret",
                   "gw:pw"):
        assert absent not in text, f"{absent} exported"
    assert "filter.manufacturer=ELV,KAM" in text and "receiving.server.url=https://hes.example.net/in" in text

    fleet_config(config, cad, **{"gateway.serial": "00000999", "receiver.port": str(pty_receiver.link),
                                 "receiving.server.password": "pw-999"})
    original = config.path.read_bytes()
    gw = gateway(config)
    mark = gw.mark()
    result = cli(config, "import", str(exported))
    assert result.returncode == 0, result.stderr
    assert b"the running gateway reloaded the configuration" in result.stdout
    gw.wait_log(r"configuration reloaded", after=mark)
    imported = model.load(config.path)
    assert imported.filter_manufacturer == ("ELV", "KAM") and imported.radio_mode == "T1"
    assert (imported.gateway_serial, imported.push_password, imported.state_directory) == ("00000999", "pw-999",
                                                                                           config.state)
    assert gw.status()["gateway_serial"] == "00000999"

    shown = cli(config, "show").stdout.decode()
    assert "receiving.server.password=********" in shown and "pw-999" not in shown

    before = snapshot(config)
    bad = tmp_path / "bad.cfg"
    bad.write_text("filter.manufacturer=ABB\nusb.baud.rate=12345\nfilter.device.id=1234\n")
    result = cli(config, "import", str(bad))
    assert result.returncode == 3 and result.stdout == b""
    assert sorted(result.stderr.decode().splitlines()) == [  # every problem, one line each
        "filter.device.id: invalid value '1234'; allowed: comma-separated 8-digit meter IDs, or empty for all"
        " ('1234' is not valid)",
        "usb.baud.rate: invalid value '12345'; allowed: 3600 4800 7200 9600 14400 19200 28800 38400 57600 76800"
        " 115200",
    ]
    result = cli(config, "set", "radio.mode=X9", "filter.manufacturer=ABB")
    assert result.returncode == 3 and b"radio.mode: invalid value 'X9'" in result.stderr
    assert not before.diff(snapshot(config))

    history = cli(config, "history").stdout.decode().splitlines()
    assert [line.split()[3] for line in history[1:]] == ["import", "local"]
    mark = gw.mark()
    result = cli(config, "revert", "1")
    assert result.returncode == 0 and b"configuration #3 applied and recorded" in result.stdout
    assert config.path.read_bytes() == original
    gw.wait_log(r"configuration reloaded", after=mark)
    assert [line.split()[3] for line in cli(config, "history").stdout.decode().splitlines()[1:]] == [
        "revert", "import", "local"]
    assert cli(config, "revert", "9").returncode == 3


# -------------------------------------------------------------------------------------------
# The integrator's side as documented: scripts/make-cad + docs/examples/nginx-cad.conf


def make_cad(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, str(MAKE_CAD), *args], capture_output=True, timeout=30)


def test_documented_nginx_example_serves_each_gateway_its_make_cad_file(tmp_path, cad) -> None:
    """make-cad turns a CSV into per-serial files; the documented nginx configuration hands each
    gateway its own by the Serial/ field of the User-Agent and logs the results it POSTs."""
    assert os.access(MAKE_CAD, os.X_OK)
    example = (ROOT / "docs/examples/nginx-cad.conf").read_text()
    quoted = re.findall(r"```nginx\n(.*?)```", (ROOT / "docs/fleet.md").read_text(), re.S)
    assert quoted and all(block in example for block in quoted), "docs/fleet.md quotes nginx lines the example lacks"
    cad.put("files/hes-ca.pem", "ca\n")
    table = tmp_path / "gateways.csv"
    table.write_text("serial,filter.manufacturer,radio.mode,file:certs/hes-ca.pem\n"
                     f'{SERIAL},"ELV,KAM",T1,{cad.url("/files/hes-ca.pem")}\n'
                     "00000162,APA,,\n")
    out = cad.www / "cad"
    run = make_cad(str(table), "--out", str(out), "--notify-url", cad.url("/sync-result"),
                   "--set", "receiving.server.retries=3")
    assert run.returncode == 0, run.stderr
    assert run.stdout == f"2 .cad files in {out} (checked with the gateway's parser)\n".encode()
    written = tree(out)
    assert make_cad(str(table), "--out", str(out), "--notify-url", cad.url("/sync-result"),
                    "--set", "receiving.server.retries=3").returncode == 0
    assert tree(out) == written  # same input, same files: nothing rewritten

    gateways = {}
    for serial in (SERIAL, "00000162", "00000999"):
        gateways[serial] = ConfigFile(tmp_path / serial)
        gateways[serial].path.parent.mkdir()
        fleet_config(gateways[serial], cad, **{"gateway.serial": serial})
    results = {serial: sync_now(gw) for serial, gw in gateways.items()}
    assert (results[SERIAL].returncode, results[SERIAL].stdout) == (0, b"900\n")
    assert (results["00000162"].returncode, results["00000162"].stdout) == (0, b"900\n")
    assert results["00000999"].returncode == 1
    assert re.fullmatch(rb"921 cannot fetch the \.cad file: GET https://\S+/gateway\.cad: HTTP 404\n",
                        results["00000999"].stdout)

    first, second = (model.load(gateways[s].path) for s in (SERIAL, "00000162"))
    assert (first.filter_manufacturer, first.radio_mode, first.push_retries) == (("ELV", "KAM"), "T1", 3)
    assert (first.gateway_serial, second.gateway_serial) == (SERIAL, "00000162")
    assert (second.filter_manufacturer, second.radio_mode, second.push_retries) == (("APA",), "T1_C1A_C1B", 3)
    assert (gateways[SERIAL].state / "files/certs/hes-ca.pem").read_text() == "ca\n"
    assert not (gateways["00000162"].state / "files").exists()

    ids = {s: re.findall(r"^Sync-Id: (\S+)$", (out / f"{s}.cad").read_text(), re.M)[0] for s in (SERIAL, "00000162")}
    logged = wait_for(lambda: len(cad.results()) >= 2 and cad.results(), "two results in the nginx log")
    assert sorted((r["serial"], r["result"]) for r in logged) == [
        (serial, f"900\nSync-Id: {ids[serial]}\n") for serial in (SERIAL, "00000162")]


def test_make_cad_refuses_bad_input_and_writes_nothing(tmp_path) -> None:
    """Every problem of the CSV named with its line and column; no file written."""
    out = tmp_path / "cad"
    out.mkdir()
    (out / "00000161.cad").write_text("Sync-Mode: server\n")
    before = tree(out)
    table = tmp_path / "gateways.csv"
    table.write_text("serial,filter.manufacturer,gateway.serial,file:../../etc/passwd\n"
                     '00000161,"=HYPERLINK(""http://evil.example"")",,\n'
                     '0000016,ELV,,\n'
                     '00000162,"ELV\nreceiving.server.url=http://evil.example/",,\n'
                     "00000163,XYZ1,,\n")
    run = make_cad(str(table), "--out", str(out), "--notify-url", "ftp://config.example.net/result")
    assert run.returncode == 3 and run.stdout == b""
    errors = run.stderr.decode().splitlines()
    assert errors[-1] == "make-cad: nothing written"
    for expected in (r"--notify-url: URL 'ftp://config\.example\.net/result' refused; allowed: https://",
                     r":1: column 3 \('gateway\.serial'\): gateway\.serial cannot be set from a \.cad file",
                     r":1: column 4 \('file:\.\./\.\./etc/passwd'\): local name '\.\./\.\./etc/passwd' refused",
                     r":2: column filter\.manufacturer: starts with '=', like a spreadsheet formula",
                     r":3: serial '0000016' refused; allowed: exactly 8 digits",
                     r":5: column filter\.manufacturer: control character U\+000A"):
        assert any(re.search(expected, line) for line in errors), f"no {expected!r} in {errors}"
    assert tree(out) == before
