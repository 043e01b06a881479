"""The configuration model: every key valid and invalid, whole-file loading, and the check."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from wmbus_stream.config import KEYS, MASK, Config, check_file, defaults, load, parse, save, to_text
from wmbus_stream.config.model import require
from wmbus_stream.config.keys import BY_NAME
from wmbus_stream.core.schedule import Schedule
from wmbus_stream.errors import ConfigError, ConfigFileError

# key -> [(text, expected typed value)]
VALID: dict[str, list[tuple[str, object]]] = {
    "service.enabled": [("true", True), ("FALSE", False), ("True", True)],
    "receiving.server.url": [
        ("", None),
        ("https://hes.example/in", "https://hes.example/in"),
        ("http://10.0.0.1:8080/x?y=1", "http://10.0.0.1:8080/x?y=1"),
        ("https://u:p@hes.example", "https://u:p@hes.example"),
        ("https://[::1]:8443/", "https://[::1]:8443/"),
    ],
    "receiving.server.push.cron": [
        ("*/15 * * * *", "*/15 * * * *"),
        ("15 0 * * * *", "15 0 * * * *"),
    ],
    "filter.manufacturer": [
        ("", ()),
        ("ELV", ("ELV",)),
        ("elv, Abb ,KAM", ("ELV", "ABB", "KAM")),
        ("ELV,elv", ("ELV",)),
    ],
    "filter.device.type": [("", ()), ("07", (7,)), ("1B,02,ff", (0x1B, 2, 0xFF))],
    "filter.device.id": [
        ("", ()),
        ("61000164", ("61000164",)),
        ("61000164, 05047157", ("61000164", "05047157")),
    ],
    "radio.mode": [("T1_C1A_C1B", "T1_C1A_C1B"), ("s1", "S1"), ("C1A_C1B_WIDE", "C1A_C1B_WIDE")],
    "usb.baud.rate": [("115200", 115200), ("3600", 3600), ("9600", 9600)],
    "sync.enabled": [("false", False)],
    "configuration.server.url": [
        ("", None),
        ("https://cfg.example/a.cad", "https://cfg.example/a.cad"),
    ],
    "configuration.server.cron": [("30 0 * * *", "30 0 * * *"), ("@daily", "@daily")],
    "configuration.server.ca.file": [("", None), ("/etc/ssl/cfg-ca.pem", Path("/etc/ssl/cfg-ca.pem"))],
    "configuration.server.timeout": [("120", 120.0), ("1", 1.0), ("2.5", 2.5), ("600", 600.0)],
    "configuration.server.allow.keys": [("", ()), ("receiving.server.url, web.listen,receiving.server.url",
                                                    ("receiving.server.url", "web.listen"))],
    "configuration.server.allow.http": [("false", False), ("TRUE", True)],
    "configuration.server.allow.origins": [
        ("", ()), ("*", ("*",)),
        ("HTTPS://Files.Example.NET, http://127.0.0.1:8080/,https://[::1]:8443,https://files.example.net:443",
         ("https://files.example.net:443", "http://127.0.0.1:8080", "https://[::1]:8443"))],
    "show.only.filtered": [("true", True), ("false", False)],
    "receiver.protocol": [
        (p, p) for p in ("cmex50", "im871a", "amb8465", "rtlwmbus", "hex", "simulator")
    ]
    + [("IM871A", "im871a")],
    "receiver.port": [
        ("/dev/ttyUSB0", "/dev/ttyUSB0"),
        ("/dev/serial/by-id/usb-X-if00", "/dev/serial/by-id/usb-X-if00"),
        ("socket://192.168.1.5:2000", "socket://192.168.1.5:2000"),
        ("rfc2217://host:4000", "rfc2217://host:4000"),
        ("loop://", "loop://"),
        ("capture.bin", "capture.bin"),
        ("-", "-"),
    ],
    "receiver.address": [("", None), ("62001772", "62001772"), ("00000001", "00000001")],
    "receiver.reconnect.seconds": [("2", 2.0), ("0.5", 0.5), ("60", 60.0)],
    "receiver.silence.minutes": [("60", 60.0), ("0", 0.0), ("0.5", 0.5), ("10080", 10080.0)],
    "simulator.meters": [("300", 300), ("1", 1), ("100000", 100000)],
    "gateway.serial": [("00000161", "00000161"), ("99999999", "99999999")],
    "gateway.wired.address": [("0", 0), ("255", 255), ("0xFE", 254), ("0x0a", 10)],
    "report.timezone": [
        ("UTC", ZoneInfo("UTC")),
        ("Europe/Stockholm", ZoneInfo("Europe/Stockholm")),
    ],
    "receiving.server.username": [("", None), ("gateway 7", "gateway 7")],
    "receiving.server.password": [("", None), ("s3cret: with#all=chars", "s3cret: with#all=chars")],
    "receiving.server.ca.file": [
        ("", None),
        ("/etc/ssl/private-ca.pem", Path("/etc/ssl/private-ca.pem")),
    ],
    "receiving.server.connect.timeout": [("10", 10.0), ("0.1", 0.1)],
    "receiving.server.read.timeout": [("30", 30.0), ("600", 600.0)],
    "receiving.server.retries": [("0", 0), ("5", 5), ("20", 20)],
    "push.jitter.seconds": [("0", 0.0), ("30", 30.0), ("300", 300.0)],
    "state.directory": [("/var/lib/wmbus-stream", Path("/var/lib/wmbus-stream"))],
    "store.flush.seconds": [("5", 5.0), ("0.1", 0.1), ("3600", 3600.0)],
    "analyzer.reset.hours": [("24", 24), ("0", 0), ("8760", 8760)],
    "log.level": [("info", "info"), ("DEBUG", "debug"), ("warning", "warning")],
    "web.enabled": [("false", False), ("true", True)],
    "web.listen": [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::]:443", ("::", 443)),
        ("gateway.local:80", ("gateway.local", 80)),
    ],
    "web.hosts": [("", ()), ("gw.example.com, 192.168.1.5,[FE80::1]", ("gw.example.com", "192.168.1.5", "fe80::1")),
                  ("Gateway.Local.,gateway.local", ("gateway.local",))],
    "web.tls.cert": [("", None)],
    "web.tls.key": [("", None)],
    "web.metrics.public": [("false", False), ("true", True)],
}

INVALID: dict[str, list[str]] = {
    "service.enabled": ["yes", "1", "", "truee"],
    "receiving.server.url": [
        "ftp://hes.example/",
        "hes.example/in",
        "https://",
        "https://h:99999/",
        "https://h/ x",
        "https://h/#frag",
        "file:///etc/passwd",
    ],
    "receiving.server.push.cron": ["", "61 * * * *", "* * * *", "@reboot", "0 0 30 2 *"],
    "filter.manufacturer": ["EL", "ELVA", "EL1", "ELV,", "ELV,,ABB", "ÄBC"],
    "filter.device.type": ["7", "007", "0x07", "GG", "07,"],
    "filter.device.id": ["6100016", "610001640", "6100016A", "61000164,", "-1000164"],
    "radio.mode": ["T2", "", "T1,C1A", "C1"],
    "usb.baud.rate": ["115201", "", "9600.0", "abc", "300"],
    "sync.enabled": ["no"],
    "configuration.server.url": ["ftp://x/", "nohost"],
    "configuration.server.cron": ["0 0 * * 8", "*/0 * * * *"],
    "configuration.server.ca.file": ["cfg-ca.pem"],
    "configuration.server.timeout": ["0", "0.5", "601", "-1", "soon"],
    "configuration.server.allow.keys": ["gateway.serial", "state.directory", "configuration.server.allow.keys",
                                        "no.such.key", "receiving.server.url,", "a b"],
    "configuration.server.allow.http": ["yes", "1"],
    "configuration.server.allow.origins": ["files.example.net", "ftp://files.example.net", "https://user@x.example",
                                           "https://x.example/path", "https://x.example/?q", "https://x.example,,"],
    "show.only.filtered": ["maybe"],
    "receiver.protocol": ["cul", "", "im871"],
    "receiver.port": ["", "http://host:1/", "file:///tmp/x"],
    "receiver.address": ["1234567", "abcdefgh"],
    "receiver.reconnect.seconds": ["0", "61", "-1", "nan", "1e3"],
    "receiver.silence.minutes": ["-1", "10081", "an hour", "inf"],
    "simulator.meters": ["0", "100001", "1.5"],
    "gateway.serial": ["", "161", "0000016A", "000001611"],
    "gateway.wired.address": ["256", "-1", "0x100", "0xG1", "1.0"],
    "report.timezone": ["", "Mars/Base", "../../etc/passwd", "/etc/localtime", "CEST+2"],
    "receiving.server.username": ["user:name"],
    "receiving.server.ca.file": ["relative/ca.pem"],
    "receiving.server.connect.timeout": ["0", "301", "inf"],
    "receiving.server.read.timeout": ["0.05", "601"],
    "receiving.server.retries": ["21", "-1", "x"],
    "push.jitter.seconds": ["301", "-5"],
    "state.directory": ["", "var/lib/x"],
    "store.flush.seconds": ["0", "0.05", "3601", "5s"],
    "analyzer.reset.hours": ["-1", "8761", "24.5"],
    "log.level": ["verbose", "warn", ""],
    "web.enabled": ["on"],
    "web.listen": ["8080", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", "[zz::1]:80", "a b:80"],
    "web.hosts": ["a..b", "x_y", "-gw", "gw,", "evil.example:8080", "a b"],
    "web.tls.cert": ["cert.pem"],
    "web.tls.key": ["key.pem"],
    "web.metrics.public": ["1"],
}


def test_tables_cover_every_key() -> None:
    names = [key.name for key in KEYS]
    assert len(names) == len(set(names))
    assert set(VALID) == set(names)
    # Every key but the free-text password has invalid examples.
    assert set(INVALID) == set(names) - {"receiving.server.password"}


def test_every_default_is_valid_and_described() -> None:
    config = defaults()
    for key in KEYS:
        assert config.get(key.name) == key.default
        assert key.description and key.allowed
    assert config.explicit == frozenset()
    assert config.push_cron == Schedule.parse("*/15 * * * *", ZoneInfo("UTC"))
    assert config.sync_cron == Schedule.parse("30 0 * * *", ZoneInfo("UTC"))
    assert config.timezone == ZoneInfo("UTC") and config.gateway_serial == "00000000"
    assert config.radio_mode == "T1_C1A_C1B" and config.baud_rate == 115200
    assert config.web_listen == ("127.0.0.1", 8080) and not config.web_enabled


@pytest.mark.parametrize(
    ("name", "text", "expected"), [(n, t, e) for n, cases in VALID.items() for t, e in cases]
)
def test_valid_values(name: str, text: str, expected: object) -> None:
    config = parse({name: text})
    value = getattr(config, BY_NAME[name].attr)
    if isinstance(value, Schedule):
        value = str(value)
    assert value == expected
    assert config.get(name) == text
    assert name in config.explicit


@pytest.mark.parametrize(("name", "text"), [(n, t) for n, cases in INVALID.items() for t in cases])
def test_invalid_values_name_key_value_and_allowed(name: str, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse({name: text})
    (problem,) = info.value.problems
    assert problem.key == name
    assert problem.value == text
    assert problem.allowed.startswith(BY_NAME[name].allowed)
    assert str(problem) == f"{name}: invalid value {text!r}; allowed: {problem.allowed}"


def test_surrounding_blanks_are_trimmed() -> None:
    config = parse({"filter.device.id": "  61000164\t", "radio.mode": " t1 "})
    assert config.filter_device_id == ("61000164",) and config.radio_mode == "T1"
    assert config.get("filter.device.id") == "61000164"


def test_tls_cert_and_key_go_together() -> None:
    config = parse(
        {"web.tls.cert": "/etc/wmbus-stream/web.pem", "web.tls.key": "/etc/wmbus-stream/web.key"}
    )
    assert config.web_tls_cert == Path("/etc/wmbus-stream/web.pem")
    with pytest.raises(ConfigError) as info:
        parse({"web.tls.cert": "/etc/wmbus-stream/web.pem"})
    assert [p.key for p in info.value.problems] == ["web.tls.key"]


def test_sync_needs_a_server_url() -> None:
    with pytest.raises(ConfigError) as info:
        parse({"sync.enabled": "true"})
    assert [p.key for p in info.value.problems] == ["configuration.server.url"]
    assert parse(
        {"sync.enabled": "true", "configuration.server.url": "https://c.example/x.cad"}
    ).sync_enabled


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        parse(
            {
                "filter.manufacturer": "EL1",
                "usb.baud.rate": "1",
                "gateway.serial": "x",
                "filter.device.idd": "61000164",
                "recieving.server.url": "https://x/",
                "totally.unrelated": "1",
            }
        )
    problems = {p.key: p for p in info.value.problems}
    assert set(problems) == {
        "filter.manufacturer",
        "usb.baud.rate",
        "gateway.serial",
        "filter.device.idd",
        "recieving.server.url",
        "totally.unrelated",
    }
    assert "did you mean 'filter.device.id'" in problems["filter.device.idd"].allowed
    assert "did you mean 'receiving.server.url'" in problems["recieving.server.url"].allowed
    assert "none is close" in problems["totally.unrelated"].allowed
    assert info.value.key in problems


def test_control_characters_in_values_are_problems() -> None:
    with pytest.raises(ConfigError) as info:
        parse({"filter.device.id": "61000164\nservice.enabled=false"})
    (problem,) = info.value.problems
    assert problem.key == "filter.device.id" and "U+000A" in problem.allowed


def test_schedules_run_in_the_report_time_zone() -> None:
    config = parse(
        {"report.timezone": "Europe/Stockholm", "receiving.server.push.cron": "0 6 * * *"}
    )
    assert config.push_cron.zone == ZoneInfo("Europe/Stockholm")
    assert config.sync_cron.zone == ZoneInfo("Europe/Stockholm")
    after = datetime(2026, 7, 1, tzinfo=UTC)
    assert config.push_cron.next_after(after).astimezone(UTC).hour == 4


def test_secrets_never_show() -> None:
    config = parse(
        {
            "receiving.server.url": "https://urluser:urlpass@hes.example/in",
            "receiving.server.password": "topsecret",
            "receiving.server.username": "gw",
        }
    )
    for shown in (
        repr(config),
        str(config),
        str(config.masked()),
        to_text(config, mask_secrets=True),
        str(config.exported()),
    ):
        assert "topsecret" not in shown and "urlpass" not in shown
    assert config.masked()["receiving.server.password"] == MASK
    assert config.masked()["receiving.server.url"] == f"https://urluser:{MASK}@hes.example/in"
    with pytest.raises(ConfigError) as info:
        parse({"receiving.server.password": "bad\x00secret"})
    assert "secret" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        parse({"configuration.server.url": "ftp://u:hidden@x/"})
    assert "hidden" not in str(info.value)


def test_credentials_from_keys_or_url() -> None:
    config = parse({"receiving.server.url": "https://u%40x:p%3Aw@hes.example:8443/in?x=1"})
    assert config.push_credentials == ("u@x", "p:w")
    assert config.push_endpoint == "https://hes.example:8443/in?x=1"
    config = config.with_changes(
        {"receiving.server.username": "gw", "receiving.server.password": "pw"}
    )
    assert config.push_credentials == ("gw", "pw")
    assert defaults().push_credentials is None
    assert parse({"receiving.server.username": "only"}).push_credentials == ("only", "")


def test_export_leaves_out_device_specific_keys_and_secrets() -> None:
    config = parse(
        {
            "gateway.serial": "00000161",
            "receiving.server.url": "https://u:p@hes.example/in",
            "receiving.server.username": "gw",
            "receiving.server.password": "pw",
            "filter.manufacturer": "ELV",
            "web.tls.cert": "/a.pem",
            "web.tls.key": "/a.key",
        }
    )
    assert config.exported() == {
        "receiving.server.url": "https://hes.example/in",
        "filter.manufacturer": "ELV",
    }
    for key in KEYS:
        if key.secret:
            assert key.device_specific


def test_with_changes() -> None:
    base = parse({"filter.manufacturer": "ELV", "receiving.server.password": "pw"})
    changed = base.with_changes(
        {"filter.manufacturer": "ABB", "radio.mode": "T1", "receiving.server.password": MASK}
    )
    assert changed.filter_manufacturer == ("ABB",) and changed.radio_mode == "T1"
    assert changed.push_password == "pw"  # the masked value sent back keeps the secret
    assert base.filter_manufacturer == ("ELV",)  # immutable
    reset = changed.with_changes({"radio.mode": None})
    assert reset.radio_mode == "T1_C1A_C1B" and "radio.mode" not in reset.explicit
    with pytest.raises(ConfigError):
        base.with_changes({"filter.manufacturer": "E"})
    with pytest.raises(AttributeError):
        base.radio_mode = "S1"  # type: ignore[misc]


def test_config_equality_and_hash() -> None:
    assert parse({"radio.mode": "t1"}) == parse({"radio.mode": "t1"})
    assert hash(parse({"radio.mode": "t1"})) == hash(parse({"radio.mode": "t1"}))
    assert parse({"radio.mode": "t1"}) != defaults()


# -- files ----------------------------------------------------------------------------------


def test_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "stream.cfg"
    config = parse(
        {
            "gateway.serial": "00000161",
            "filter.device.id": "61000164,05047157",
            "report.timezone": "Europe/Stockholm",
            "receiving.server.password": "p#w=1",
        }
    )
    path.write_text(to_text(config))
    loaded = load(path)
    assert loaded == config
    full = tmp_path / "full.cfg"
    full.write_text(to_text(config, full=True))
    assert load(full).raw == config.raw
    assert load(full).explicit == {key.name for key in KEYS}


def test_load_reports_file_and_key_problems_together(tmp_path: Path) -> None:
    path = tmp_path / "stream.cfg"
    path.write_bytes(b"# test\nradio.mode=T2\nnoequals\nradio.mode=T1\nfilter.manufacturer=\xff\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert [(p.key, p.value) for p in info.value.problems] == [
        ("line 3", "noequals"),
        ("radio.mode", "T1"),
        ("filter.manufacturer", "filter.manufacturer=\\xff"),
        ("radio.mode", "T2"),
    ]
    assert check_file(path) == info.value.problems


def test_unreadable_file_is_a_file_error_not_an_invalid_configuration(tmp_path: Path) -> None:
    missing = tmp_path / "nope.cfg"
    with pytest.raises(ConfigFileError) as info:
        load(missing)
    assert info.value.path == str(missing) and "No such file" in info.value.reason
    (problem,) = info.value.problems  # still a ConfigError: every caller that lists problems keeps working
    assert problem.key == "<file>" and problem.value == str(missing)
    (problem,) = check_file(tmp_path)  # a folder is there to read, but it is no configuration file
    assert problem.key == "<file>" and "(this is a folder)" in problem.allowed


def test_save_keeps_comments_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "stream.cfg"
    path.write_text(
        "# site 7, installed 2026-11-24\nfilter.manufacturer = ELV\n\n# push\nradio.mode=T1\n"
    )
    config = load(path).with_changes({"radio.mode": "S1", "gateway.serial": "00000161"})
    save(path, config)
    assert path.read_text() == (
        "# site 7, installed 2026-11-24\nfilter.manufacturer = ELV\n\n# push\nradio.mode=S1\n"
        "gateway.serial=00000161\n"
    )
    assert path.stat().st_mode & 0o777 == 0o600
    assert load(path) == config
    with pytest.raises(ConfigError):
        save(path, {"radio.mode": "T9"})
    assert load(path) == config  # an invalid configuration is never written


def test_config_is_a_slotted_frozen_dataclass() -> None:
    assert not hasattr(defaults(), "__dict__")
    assert Config.__dataclass_params__.frozen  # type: ignore[attr-defined]


def test_the_baud_rate_defaults_to_the_receivers_own_unless_set() -> None:
    assert parse({"receiver.protocol": "im871a"}).baud_rate == 57600
    assert parse({"receiver.protocol": "AMB8465"}).baud_rate == 9600
    assert parse({"receiver.protocol": "rtlwmbus"}).baud_rate == defaults().baud_rate == 115200
    im871a = parse({"receiver.protocol": "im871a"})
    assert im871a.get("usb.baud.rate") == "57600" and "usb.baud.rate" not in im871a.explicit
    assert im871a.with_changes({"receiver.protocol": "amb8465"}).baud_rate == 9600  # the default follows
    explicit = parse({"receiver.protocol": "im871a", "usb.baud.rate": "115200"})
    assert explicit.baud_rate == 115200 and explicit.with_changes({"receiver.protocol": "amb8465"}).baud_rate == 115200
    assert "usb.baud.rate" not in im871a.exported()  # another gateway's protocol picks its own


def test_a_file_cut_at_a_line_boundary_loses_a_required_key_and_is_refused(tmp_path: Path) -> None:
    """Field readiness #5: the cut file parses (fewer keys); the lost receiving.server.url is the error."""
    whole = "gateway.serial=00000161\nradio.mode=T1\nreceiving.server.url=https://hes.example.net/in\n"
    path = tmp_path / "stream.cfg"
    path.write_text(whole)
    assert check_file(path) == []
    path.write_text(whole[: whole.index("receiving")])
    (problem,) = check_file(path)
    assert str(problem) == ("receiving.server.url: invalid value ''; allowed: a value: the gateway cannot run"
                            " without this key unless sync.enabled=true (was the file cut short?)")
    with pytest.raises(ConfigError) as info:
        require(load(path))
    assert info.value.problems == [problem]
    # A gateway that syncs gets it from its configuration server.
    synced = parse({"sync.enabled": "true", "configuration.server.url": "https://cad.example.net/gw.cad"})
    assert require(synced) is synced
    # A change loses it only when the configuration before had it.
    before = parse({"receiving.server.url": "https://hes.example.net/in"})
    assert require(defaults(), before=defaults()) == defaults()
    with pytest.raises(ConfigError):
        require(defaults(), before=before)


SECRET = "TopSecret1"


@pytest.mark.parametrize("text", [
    f"receiving.server.password={SECRET}\x01\n",  # a control character
    f"receiving.server.password={SECRET}\nreceiving.server.password={SECRET}2\n",  # defined twice
    f"receiving.server.password {SECRET}\n",  # a line without '='
    f"receiving.server.pasword={SECRET}\n",  # a misspelled secret key
    f"configuration.server.password={SECRET}\x7f\n",
    f"web.secret.token={SECRET}\n",  # an unknown key that looks like a secret
    "receiving.server.password=" + SECRET + "\xff".encode("latin-1").decode("latin-1") + "\n",
], ids=["control", "twice", "no-equals", "misspelled", "other-secret", "unknown-secret-like", "latin-1"])
def test_a_secret_in_a_broken_line_is_never_shown(tmp_path: Path, text: str) -> None:
    """Trust boundaries: problems of the file's syntax mask secrets as value problems do (they were echoed)."""
    path = tmp_path / "stream.cfg"
    path.write_bytes(("receiving.server.url=https://hes.example.net/in\n" + text).encode("latin-1"))
    problems = check_file(path)
    assert problems, "the line is refused"
    with pytest.raises(ConfigError) as info:
        load(path)
    shown = "\n".join(map(str, problems)) + str(info.value)
    assert SECRET not in shown and MASK in shown
