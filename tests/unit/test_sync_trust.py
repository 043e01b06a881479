"""The sync's trust model as data: which keys a sync may set, where its requests may go."""

from __future__ import annotations

import ipaddress

import pytest

from wmbus_stream.config import model
from wmbus_stream.config.keys import KEYS, SYNC_FREE, SYNC_NEVER, SYNC_OWNER
from wmbus_stream.sync import cad, trust

T = cad.CONFIG_TARGET


def parsed(*lines: str) -> cad.CadFile:
    return cad.parse(("Sync-Mode: server\n" + "".join(f"{line}\n" for line in lines)).encode())


def test_every_key_says_what_a_sync_may_do_and_the_dangerous_ones_are_the_owners() -> None:
    assert {key.sync for key in KEYS} == {SYNC_FREE, SYNC_OWNER, SYNC_NEVER}
    owner = {key.name for key in KEYS if key.sync == SYNC_OWNER}
    assert {"receiving.server.url", "receiving.server.username", "receiving.server.password",
            "receiving.server.ca.file", "configuration.server.url", "configuration.server.cron",
            "configuration.server.ca.file", "sync.enabled", "receiver.port", "web.enabled", "web.listen",
            "web.tls.cert", "web.tls.key", "web.metrics.public", "receiver.protocol", "receiver.address"} <= owner
    assert {key.name for key in KEYS if key.sync == SYNC_NEVER} == {
        "gateway.serial", "state.directory", "configuration.server.allow.keys", "configuration.server.allow.http",
        "configuration.server.allow.origins"}
    assert cad.FORBIDDEN_KEYS == {key.name for key in KEYS if key.sync == SYNC_NEVER}


def test_an_owner_only_key_needs_exactly_that_key_allowed() -> None:
    file = parsed(f"Sync-Config-0: filter.manufacturer=ELV|{T}", f"Sync-Config-1: web.listen=0.0.0.0:80|{T}")
    assert "line 3: Sync-Config-1: web.listen is an owner-only key" in trust.refused_key(file, model.defaults())
    other = model.parse({"configuration.server.allow.keys": "web.enabled"})
    assert "web.listen is an owner-only key" in trust.refused_key(file, other)
    allowed = model.parse({"configuration.server.allow.keys": "web.enabled,web.listen"})
    assert trust.refused_key(file, allowed) is None


@pytest.mark.parametrize("url, creds_in_sync, refused", [
    ("https://hes.example/other-path", [], False),  # same origin: the credentials belong there
    ("https://HES.example:443/in", [], False),
    ("https://hes.example:8443/in", [], True),  # another port is another origin
    ("http://hes.example/in", [], True),
    ("https://evil.example/in", [], True),
    ("https://evil.example/in", ["receiving.server.username=e", "receiving.server.password=f"], False),
    ("https://evil.example/in", ["receiving.server.username=e"], True),  # the old password would go along
    ("https://evil.example/in", ["receiving.server.username=", "receiving.server.password="], False),
])
def test_credentials_never_follow_a_sync_to_another_origin(url: str, creds_in_sync: list[str], refused: bool) -> None:
    old = model.parse({"receiving.server.url": "https://hes.example/in", "receiving.server.username": "gw",
                       "receiving.server.password": "pw"})
    lines = [f"Sync-Config-{n}: {line}|{T}" for n, line in enumerate([f"receiving.server.url={url}", *creds_in_sync])]
    file = parsed(*lines)
    reason = trust.moved_credentials(file, old, old.with_changes(file.changes()))
    assert (reason is not None) == refused, reason
    if refused:
        assert "credentials are never sent to another origin" in reason and "belong to https://hes.example:443" in reason


def test_a_url_with_its_own_credentials_may_move_when_no_local_ones_are_set() -> None:
    old = model.parse({"receiving.server.url": "https://gw:pw@hes.example/in"})
    file = parsed(f"Sync-Config-0: receiving.server.url=https://evil.example/in|{T}")
    assert trust.moved_credentials(file, old, old.with_changes(file.changes())) is None  # pw went with the old URL


def reach(allowed: str = "") -> trust.Reach:
    return trust.Reach.of(model.parse({"configuration.server.url": "https://fleet:secret@cfg.example/gateway.cad",
                                       "configuration.server.allow.origins": allowed}))


def test_requests_go_to_the_configuration_servers_origin_and_the_listed_ones() -> None:
    assert reach().home == "https://cfg.example:443"
    assert reach().refused("https://CFG.example:443/files/a.pem?x=1") is None
    for url in ("http://cfg.example/files/a", "https://cfg.example:8443/a", "https://127.0.0.1:8080/api/status",
                "https://files.example/a"):
        assert "is not an allowed origin (allowed: https://cfg.example:443;" in reach().refused(url)
    assert reach("https://files.example,http://10.0.0.5:8000").refused("https://files.example/a") is None
    assert reach("https://files.example,http://10.0.0.5:8000").refused("http://10.0.0.5:8000/f") is None


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]", "localhost", "169.254.169.254", "0.0.0.0", "224.0.0.1",
                                  "10.0.0.5", "192.168.1.1", "[fe80::1]", "100.64.0.1"])
def test_any_origin_means_public_addresses_only(host: str) -> None:
    reason = reach("*").refused(f"https://{host}:8080/x")
    assert reason is not None and "'*' admits public addresses only" in reason


def test_any_origin_admits_a_public_address_that_is_not_the_gateways() -> None:
    assert reach("*").refused("https://93.184.216.34/x") is None
    assert trust._own(ipaddress.ip_address("127.0.0.1")) and not trust._own(ipaddress.ip_address("192.0.2.1"))
