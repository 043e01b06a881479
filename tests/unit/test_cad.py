"""The .cad parser: valid files, and every malformed shape with its result code (920 or 921)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wmbus_stream.config.filenames import check_local_name
from wmbus_stream.sync import cad
from wmbus_stream.sync.cad import CONFIG_TARGET, CadError, parse

T = CONFIG_TARGET

GOOD = f"""Sync-Mode: server
Sync-Id: batch-2026.11:7
Sync-Notify-URL: https://cfg.example/notify?gw=161
Sync-Config-0: filter.manufacturer=ELV,ABB|{T}
Sync-Config-1: receiving.server.url=https://hes.example/in|{T}
Sync-Config-2: receiving.server.push.cron=*/5 * * * *|{T}
Sync-File-0-URL: https://cfg.example/files/ca.pem,certs/ca.pem
Sync-File-1-URL: http://cfg.example/a,b,list.txt
""".encode()


def refused(data: bytes | str) -> CadError:
    with pytest.raises(CadError) as info:
        parse(data.encode() if isinstance(data, str) else data)
    assert isinstance(info.value.reason, str) and "\n" not in info.value.reason
    return info.value


def test_a_complete_file() -> None:
    parsed = parse(GOOD)
    assert parsed.sync_id == "batch-2026.11:7"
    assert parsed.notify_url == "https://cfg.example/notify?gw=161"
    assert parsed.changes() == {
        "filter.manufacturer": "ELV,ABB",
        "receiving.server.url": "https://hes.example/in",
        "receiving.server.push.cron": "*/5 * * * *",
    }
    assert [(f.n, f.url, f.local) for f in parsed.files] == [
        (0, "https://cfg.example/files/ca.pem", "certs/ca.pem"),
        (1, "http://cfg.example/a,b", "list.txt"),  # the last comma splits: URLs may hold commas
    ]
    assert parsed.line_of("receiving.server.url").n == 1


def test_minimal_crlf_bom_comments_and_case() -> None:
    data = b"\xef\xbb\xbf# generated\r\n\r\nsync-mode:server\r\nSYNC-CONFIG-0 :  radio.mode = T1 |" + T.encode() + b"\r\n"
    parsed = parse(data)
    assert parsed.sync_id is None and parsed.notify_url is None and parsed.files == ()
    assert parsed.changes() == {"radio.mode": "T1"}


def test_empty_value_and_a_value_with_equals_and_bars() -> None:
    parsed = parse(f"Sync-Mode: server\nSync-Config-0: filter.device.id=|{T}\n"
                   f"Sync-Config-1: receiving.server.password=a=b|c|{T}\n".encode())
    assert parsed.changes() == {"filter.device.id": "", "receiving.server.password": "a=b|c"}


def test_numbers_may_come_in_any_order() -> None:
    parsed = parse(f"Sync-Config-1: radio.mode=T1|{T}\nSync-Mode: server\nSync-Config-0: usb.baud.rate=9600|{T}\n".encode())
    assert [c.n for c in parsed.configs] == [0, 1]


# -- 920: the mode ----------------------------------------------------------------------------


@pytest.mark.parametrize("data", [
    b"",
    b"\n\n",
    f"Sync-Config-0: radio.mode=T1|{T}\n".encode(),
    b"Sync-Mode: client\n",
    b"Sync-Mode: Server\n",
    b"Sync-Mode:\n",
    b"<html><body>Not found</body></html>\n",
])
def test_mode_missing_or_wrong_is_920(data: bytes) -> None:
    assert refused(data).code == 920


def test_920_still_carries_id_and_notify_url() -> None:
    error = refused(b"Sync-Mode: local\nSync-Id: 42\nSync-Notify-URL: http://cfg.example/n\nSync-Bogus: 1\n")
    assert (error.code, error.sync_id, error.notify_url) == (920, "42", "http://cfg.example/n")
    assert "'local'" in error.reason


# -- 921: everything else ---------------------------------------------------------------------

MALFORMED = {
    "duplicate mode": ("Sync-Mode: server\nSync-Mode: server\n", "more than once"),
    "unknown line": ("Sync-Mode: server\nSync-Foo: 1\n", "unknown line 'Sync-Foo'"),
    "no colon": ("Sync-Mode: server\nSync-Config-0 radio.mode=T1\n", "expected 'Name: value'"),
    "gap": (f"Sync-Mode: server\nSync-Config-0: radio.mode=T1|{T}\nSync-Config-2: usb.baud.rate=9600|{T}\n",
            "Sync-Config-1 is missing"),
    "not from 0": (f"Sync-Mode: server\nSync-Config-1: radio.mode=T1|{T}\n", "Sync-Config-0 is missing"),
    "duplicate number": (f"Sync-Mode: server\nSync-Config-0: radio.mode=T1|{T}\nSync-Config-0: usb.baud.rate=9600|{T}\n",
                         "Sync-Config-0 appears more than once"),
    "leading zero": (f"Sync-Mode: server\nSync-Config-00: radio.mode=T1|{T}\n", "leading zero"),
    "huge number": (f"Sync-Mode: server\nSync-Config-1000: radio.mode=T1|{T}\n", "too large"),
    "file gap": ("Sync-Mode: server\nSync-File-1-URL: https://x.example/a,a\n", "Sync-File-0 is missing"),
    "unknown key": (f"Sync-Mode: server\nSync-Config-0: filter.maker=ELV|{T}\n", "unknown configuration key"),
    "bad value": (f"Sync-Mode: server\nSync-Config-0: usb.baud.rate=12|{T}\n", "usb.baud.rate: invalid value '12'"),
    "bad cron": (f"Sync-Mode: server\nSync-Config-0: receiving.server.push.cron=61 * * * *|{T}\n", "invalid value"),
    "formula cell": (f"Sync-Mode: server\nSync-Config-0: filter.device.id==HYPERLINK(\"http://evil\")|{T}\n",
                     "filter.device.id: invalid value"),
    "same key twice": (f"Sync-Mode: server\nSync-Config-0: radio.mode=T1|{T}\nSync-Config-1: radio.mode=S1|{T}\n",
                       "set twice"),
    "serial": (f"Sync-Mode: server\nSync-Config-0: gateway.serial=12345678|{T}\n", "cannot be set by a configuration server"),
    "state dir": (f"Sync-Mode: server\nSync-Config-0: state.directory=/etc|{T}\n", "cannot be set"),
    "allow keys": (f"Sync-Mode: server\nSync-Config-0: configuration.server.allow.keys=receiver.port|{T}\n",
                   "configuration.server.allow.keys cannot be set by a configuration server"),
    "allow http": (f"Sync-Mode: server\nSync-Config-0: configuration.server.allow.http=true|{T}\n", "cannot be set"),
    "allow origins": (f"Sync-Mode: server\nSync-Config-0: configuration.server.allow.origins=*|{T}\n",
                      "cannot be set"),
    "file user info": ("Sync-Mode: server\nSync-File-0-URL: https://admin:admin@127.0.0.1:8080/api,a\n",
                       "user:password@ is not allowed"),
    "notify user info": ("Sync-Mode: server\nSync-Notify-URL: https://u:p@cfg.example/r\n",
                         "user:password@ is not allowed"),
    "no target": ("Sync-Mode: server\nSync-Config-0: radio.mode=T1\n", "expected 'key=value|"),
    "other target": ("Sync-Mode: server\nSync-Config-0: radio.mode=T1|/etc/passwd\n", "target '/etc/passwd' is not allowed"),
    "target traversal": (f"Sync-Mode: server\nSync-Config-0: radio.mode=T1|{T}/../../etc/shadow\n", "is not allowed"),
    "no key": (f"Sync-Mode: server\nSync-Config-0: =T1|{T}\n", "expected 'key=value|"),
    "bad id": ("Sync-Mode: server\nSync-Id: two words\n", "Sync-Id 'two words' is not allowed"),
    "two ids": ("Sync-Mode: server\nSync-Id: 1\nSync-Id: 2\n", "Sync-Id appears more than once"),
    "bad notify": ("Sync-Mode: server\nSync-Notify-URL: ftp://cfg.example/\n", "Sync-Notify-URL refused"),
    "file scheme": ("Sync-Mode: server\nSync-File-0-URL: file:///etc/passwd,passwd\n", "scheme must be http or https"),
    "no local": ("Sync-Mode: server\nSync-File-0-URL: https://x.example/a\n", "expected '<http(s) URL>,<local"),
    "dup local": ("Sync-Mode: server\nSync-File-0-URL: https://x.example/a,a\nSync-File-1-URL: https://x.example/b,a\n",
                  "named twice"),
    "file vs folder": ("Sync-Mode: server\nSync-File-0-URL: https://x.example/a,a\nSync-File-1-URL: https://x.example/b,a/b\n",
                       "collide"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_shapes_are_921(name: str) -> None:
    text, reason = MALFORMED[name]
    error = refused(text)
    assert error.code == 921, error.reason
    assert reason in error.reason


TRAVERSAL = {
    "../../etc/passwd": "'..'",
    "/etc/shadow": "absolute",
    "a/../../b": "'..'",
    "..\\x": "backslash",
    "%2e%2e/x": "percent",
    "a\x00b": "control character",
    "a\tb": "control character",
    ".hidden": "hidden",
    "a/.stage-1/x": "hidden",
    "./a": "'.' part",
    "a//b": "empty part",
    "a/": "empty part",
    "a/b/c/d/e": "folder levels",
    "x" * 201: "longer than",
    "ä.pem": "only letters",
    "a b": "only letters",
    "": "empty",
}


@pytest.mark.parametrize("local", list(TRAVERSAL))
def test_local_names_that_could_escape_are_refused(local: str) -> None:
    reason = check_local_name(local)
    assert reason is not None and TRAVERSAL[local] in reason
    if "\x00" not in local and "\t" not in local and local:
        error = refused(f"Sync-Mode: server\nSync-File-0-URL: https://x.example/f,{local}\n")
        assert error.code == 921 and TRAVERSAL[local] in error.reason


@pytest.mark.parametrize("local", ["ca.pem", "certs/ca.pem", "a/b/c/d", "_x-1.2", "A9"])
def test_plain_local_names_are_accepted(local: str) -> None:
    assert check_local_name(local) is None


@pytest.mark.parametrize(("data", "reason"), [
    (b"Sync-Mode: server\nSync-Config-0: radio.mode=T1\r|" + T.encode() + b"\n", "carriage return"),
    (b"Sync-Mode: server\rSync-Config-0: gateway.serial=1|x\n", "carriage return"),
    (b"Sync-Mode: server\nSync-Id: \xff\xfe\n", "not UTF-8"),
    (b"Sync-Mode: server\nSync-Config-0: filter.manufacturer=\xc3(|" + T.encode() + b"\n", "not UTF-8"),
    (b"Sync-Mode: server\nSync-Id: a\x00b\n", "control character U+0000"),
    (b"Sync-Mode: server\nSync-Config-0: radio.mode=T1\x1b[2J|" + T.encode() + b"\n", "U+001B"),
    ("Sync-Mode: server\nSync-Config-0: radio.mode=T1\u2028x=1|{T}\n".encode(), "U+2028"),
    (b"Sync-Mode: server\nSync-Id: " + b"a" * 5000 + b"\n", "longer than 4096 bytes"),
])
def test_line_breaks_encodings_and_overlong_lines_are_921(data: bytes, reason: str) -> None:
    error = refused(data)
    assert error.code == 921 and reason in error.reason


def test_oversize_file_is_921() -> None:
    data = b"Sync-Mode: server\n" + b"# padding\n" * (cad.MAX_BYTES // 10)
    error = refused(data)
    assert error.code == 921 and "limit" in error.reason


def test_too_many_lines_of_a_kind() -> None:
    files = "".join(f"Sync-File-{n}-URL: https://x.example/{n},f{n}\n" for n in range(cad.MAX_FILES + 1))
    assert "limit" in refused("Sync-Mode: server\n" + files).reason


def test_secret_values_are_not_echoed() -> None:
    error = refused(f"Sync-Mode: server\nSync-Config-0: receiving.server.username=a:b|{T}\n")
    assert "a:b" in error.reason  # not a secret: shown
    error = refused("Sync-Mode: server\nSync-File-0-URL: ftp://user:hunter2@x.example/f,f\n")
    assert "hunter2" not in error.reason


def test_921_keeps_the_id_for_the_notification() -> None:
    error = refused(f"Sync-Mode: server\nSync-Id: 77\nSync-Notify-URL: https://n.example/\nSync-Config-3: x=y|{T}\n")
    assert (error.code, error.sync_id, error.notify_url) == (921, "77", "https://n.example/")


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_give_a_file_or_a_cad_error(data: bytes) -> None:
    for sample in (data, b"Sync-Mode: server\n" + data):
        try:
            parse(sample)
        except CadError as exc:
            assert exc.code in (920, 921) and "\n" not in exc.reason
