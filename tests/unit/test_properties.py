"""The strict key=value reader/writer and the atomic file replacement under SIGKILL."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wmbus_stream.atomic import TEMP_SUFFIX, clean_stale, clean_stale_dir, write_atomic
from wmbus_stream.config import properties
from wmbus_stream.config.properties import MAX_LINE, parse, render
from wmbus_stream.errors import ConfigError

SAMPLE = (
    "# wmbus-stream\n"
    "! also a comment\n"
    "\n"
    "service.enabled = true\n"
    "  receiving.server.url=https://hes.example/in?a=b#frag\n"
    "filter.manufacturer=\tELV,ABB \n"
    "windows.path=C:\\temp\\x\n"
    "empty.value=\n"
)


def keys_of(problems: tuple[object, ...]) -> list[str]:
    return [p.key for p in problems]  # type: ignore[attr-defined]


# -- reading --------------------------------------------------------------------------------


def test_reads_entries_comments_and_blanks() -> None:
    doc = parse(SAMPLE.encode())
    assert doc.problems == ()
    assert dict(doc.values) == {
        "service.enabled": "true",
        "receiving.server.url": "https://hes.example/in?a=b#frag",
        "filter.manufacturer": "ELV,ABB",
        "windows.path": "C:\\temp\\x",
        "empty.value": "",
    }
    assert [line.key for line in doc.lines] == [
        None,
        None,
        None,
        "service.enabled",
        "receiving.server.url",
        "filter.manufacturer",
        "windows.path",
        "empty.value",
    ]


def test_first_equals_splits_and_colon_is_not_a_separator() -> None:
    doc = parse(b"a=b=c\nurl=http://h:80/x\n")
    assert dict(doc.values) == {"a": "b=c", "url": "http://h:80/x"}
    doc = parse(b"key: value\n")
    assert keys_of(doc.problems) == ["line 1"]
    assert "key=value" in doc.problems[0].allowed


def test_crlf_line_ends_and_bom_are_accepted() -> None:
    doc = parse(b"\xef\xbb\xbfa=1\r\nb=2\r\n")
    assert doc.problems == () and dict(doc.values) == {"a": "1", "b": "2"}


def test_no_final_newline() -> None:
    assert dict(parse(b"a=1\nb=2").values) == {"a": "1", "b": "2"}


@pytest.mark.parametrize(
    ("data", "key", "allowed"),
    [
        (b"just words\n", "line 1", "key=value"),
        (b"=value\n", "line 1", "a key of"),
        (b"bad key=1\n", "bad key", "a key of"),
        (b"a=one\ra=two\n", "a", "U+000D"),
        (b"a=x\x00y\n", "a", "U+0000"),
        (b"a=x\x1by\n", "a", "U+001B"),
        (b"a=x\x7f\n", "a", "U+007F"),
        (b"a=x\xc2\x85y\n", "a", "U+0085"),
        ("a=x\u2028y\n".encode(), "a", "U+2028"),
        (b"# comment with \x00 in it\n", "line 1", "U+0000"),
        (b"a=caf\xe9\n", "a", "UTF-8"),
        (b"\xff\xfe=1\n", "line 1", "UTF-8"),
        (b"a=" + b"x" * (MAX_LINE - 1) + b"\n", "a", f"at most {MAX_LINE} bytes"),
    ],
)
def test_bad_lines_become_problems(data: bytes, key: str, allowed: str) -> None:
    doc = parse(data)
    assert len(doc.problems) == 1, doc.problems
    problem = doc.problems[0]
    assert problem.key == key
    assert allowed in problem.allowed
    assert key not in doc.values


def test_longest_line_is_accepted() -> None:
    line = b"a=" + b"x" * (MAX_LINE - 2)
    assert len(line) == MAX_LINE
    assert parse(line + b"\n").problems == ()


def test_duplicate_key_is_a_problem_and_the_first_value_wins() -> None:
    doc = parse(b"a=1\nb=2\na=3\n")
    assert dict(doc.values) == {"a": "1", "b": "2"}
    (problem,) = doc.problems
    assert (problem.key, problem.value) == ("a", "3")
    assert "line 1" in problem.allowed


def test_every_problem_is_reported_and_the_rest_is_read() -> None:
    data = b"ok.one=1\nnoequals\nbad=\x00\nok.two=2\nok.one=9\nx=\xff\n" + b"y=" + b"z" * 5000
    doc = parse(data)
    assert dict(doc.values) == {"ok.one": "1", "ok.two": "2"}
    assert keys_of(doc.problems) == ["line 2", "bad", "ok.one", "x", "y"]
    assert all(str(p).startswith(f"{p.key}: invalid value ") for p in doc.problems)


def test_huge_file_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "big.cfg"
    path.write_bytes(b"# " + b"x" * properties.MAX_FILE + b"\n")
    doc = properties.read(path)
    assert keys_of(doc.problems) == ["<file>"] and not doc.values


def test_problem_messages_escape_control_characters() -> None:
    (problem,) = parse(b"a=x\ry\n").problems
    assert "\r" not in str(problem) and "\\r" in str(problem)


# -- writing --------------------------------------------------------------------------------


def test_render_fresh_file() -> None:
    text = render({"a": "1", "b": ""}, header=["hello"])
    assert text == "# hello\na=1\nb=\n"


def test_render_keeps_comments_order_and_spelling_of_unchanged_entries() -> None:
    template = parse(SAMPLE.encode())
    values = dict(template.values)
    values["filter.manufacturer"] = "ELV"
    del values["windows.path"]
    values["new.key"] = "42"
    text = render(values, template)
    assert text == (
        "# wmbus-stream\n"
        "! also a comment\n"
        "\n"
        "service.enabled = true\n"
        "  receiving.server.url=https://hes.example/in?a=b#frag\n"
        "filter.manufacturer=ELV\n"
        "empty.value=\n"
        "new.key=42\n"
    )


def test_render_drops_bad_and_duplicate_lines_of_the_template() -> None:
    template = parse(b"# c\nbroken\na=1\na=2\n")
    assert render(dict(template.values), template) == "# c\na=1\n"


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("a", "x\ny", "U+000A"),
        ("a", "x\r\nfilter.device.id=1", "U+000D"),
        ("a", "x\x00", "U+0000"),
        ("a", " padded", "without leading or trailing spaces"),
        ("a", "x" * MAX_LINE, f"at most {MAX_LINE} bytes"),
        ("bad key", "1", "a key of"),
        ("", "1", "a key of"),
        ("a=b", "1", "a key of"),
    ],
)
def test_render_refuses_what_would_not_read_back(key: str, value: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        render({key: value})
    assert allowed in info.value.problems[0].allowed


def test_render_refuses_a_header_with_a_newline() -> None:
    with pytest.raises(ConfigError):
        render({"a": "1"}, header=["one\ntwo=3"])


_keys = st.from_regex(r"[a-z][a-z0-9]{0,8}(\.[a-z0-9_-]{1,8}){0,3}", fullmatch=True)
_values = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=40
).map(lambda s: s.strip(" \t"))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=12))
def test_round_trip_read_write_read(values: dict[str, str]) -> None:
    text = render(values, header=["generated"])
    doc = parse(text.encode())
    assert doc.problems == ()
    assert dict(doc.values) == values
    # Writing again from the read file gives the very same text.
    assert render(dict(doc.values), doc) == text


# -- atomic write ---------------------------------------------------------------------------


def temps(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.endswith(TEMP_SUFFIX))


def test_write_atomic_mode_content_and_no_leftovers(tmp_path: Path) -> None:
    path = tmp_path / "stream.cfg"
    os.umask(0o022)
    write_atomic(path, "a=1\n")
    write_atomic(path, b"a=2\n", mode=0o640)
    assert path.read_bytes() == b"a=2\n"
    assert path.stat().st_mode & 0o777 == 0o640
    write_atomic(path, "a=3\n")
    assert path.stat().st_mode & 0o777 == 0o600
    assert temps(tmp_path) == []


def test_write_atomic_through_a_symlink_replaces_the_target(tmp_path: Path) -> None:
    real = tmp_path / "data" / "stream.cfg"
    real.parent.mkdir()
    real.write_text("a=1\n")
    link = tmp_path / "stream.cfg"
    link.symlink_to(real)
    write_atomic(link, "a=2\n")
    assert link.is_symlink() and real.read_text() == "a=2\n"


def test_failed_replace_removes_the_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "adir"
    (target / "inside").mkdir(parents=True)
    with pytest.raises(OSError):
        write_atomic(target, "a=1\n")
    assert temps(tmp_path) == []
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "missing" / "x.cfg", "a=1\n")


def test_clean_stale_removes_only_our_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "stream.cfg"
    ours = tmp_path / f".stream.cfg.0123456789ab{TEMP_SUFFIX}"
    other_target = tmp_path / f".other.cfg.0123456789ab{TEMP_SUFFIX}"
    keep = [
        target,
        tmp_path / ".stream.cfg.swp",
        tmp_path / f".stream.cfg.notrandomhex{TEMP_SUFFIX}",
        tmp_path / ".stream.cfg.bak.0123456789ab.tmp",
    ]
    for p in (ours, other_target, *keep):
        p.write_text("x")
    assert clean_stale(target) == [ours]
    assert other_target.exists() and all(p.exists() for p in keep)
    assert clean_stale_dir(tmp_path) == [other_target]
    assert all(p.exists() for p in keep)


_WRITER = r"""
import sys
from wmbus_stream.atomic import write_atomic
path, a, b = sys.argv[1], open(sys.argv[2], "rb").read(), open(sys.argv[3], "rb").read()
sys.stdout.write("ready\n"); sys.stdout.flush()
while True:
    write_atomic(path, b); write_atomic(path, a)
"""


def test_sigkill_during_writes_leaves_old_or_new(tmp_path: Path) -> None:
    from wmbus_stream.config import model

    old_cfg = model.parse({"gateway.serial": "00000161", "filter.manufacturer": "ELV"})
    new_cfg = model.parse({"gateway.serial": "00000162", "filter.device.type": "07,1B"})
    # Padding comments make each write take long enough for kills to land mid-write.
    pad = "".join(f"# padding line {i:06d} {'.' * 100}\n" for i in range(4000))
    old = (pad + model.to_text(old_cfg)).encode()
    new = (pad + model.to_text(new_cfg)).encode()
    (tmp_path / "a").write_bytes(old)
    (tmp_path / "b").write_bytes(new)
    work = tmp_path / "etc"
    work.mkdir()
    path = work / "stream.cfg"
    rng = random.Random(1234)
    stale_seen = 0
    for _ in range(30):
        write_atomic(path, old)
        child = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), str(tmp_path / "a"), str(tmp_path / "b")],
            stdout=subprocess.PIPE,
        )
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0, 0.03))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
        content = path.read_bytes()
        assert content in (old, new)
        assert model.load(path) in (old_cfg, new_cfg)
        stale = clean_stale(path)
        stale_seen += len(stale)
        assert temps(work) == []
    # The kills did land in the middle of writes (a temporary file was left behind).
    assert stale_seen > 0
