"""Every command and every output form of the real ``wmbus-stream`` console script.

Each test runs the installed entry point (the ``wmbus-stream`` script next to this Python) as
a process and checks its exit code, which stream carries what, and that no traceback ever
appears. The exit-code table of docs/cli.md is parsed and run as written, so the code and
the documentation cannot drift apart. ``test_every_command_is_tested_here`` fails when a
command is added to the parser without a test here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tarfile
import termios
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from gwkit import PROTOCOLS, RECEIVER, ConfigFile, vector_telegrams
from wmbus_stream import __version__, cli
from wmbus_stream.hes import parse_report

WMBUS = Path(sys.executable).with_name("wmbus-stream")
DOCS = Path(__file__).resolve().parents[2] / "docs"
FAR_AWAY_CRON = "0 0 1 1 *"  # a push slot months away: only ``push now`` pushes

TESTED: set[str] = set()


def covers(*commands: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Mark a test as covering these commands (for ``test_every_command_is_tested_here``)."""
    TESTED.update(commands)
    return lambda test: test


class Run:
    """A finished command: exit code and both streams as text."""

    def __init__(self, proc: subprocess.CompletedProcess[bytes]) -> None:
        self.code = proc.returncode
        self.raw_stdout = proc.stdout
        self.out = proc.stdout.decode("utf-8", "replace")
        self.err = proc.stderr.decode("utf-8", "replace")

    def __repr__(self) -> str:
        return f"exit {self.code}\n--- stdout ---\n{self.out[-3000:]}\n--- stderr ---\n{self.err[-3000:]}"


def wmbus(*args: str, cwd: Path | None = None, input: bytes | None = None, timeout: float = 120) -> Run:
    """Run the console script to its end; a traceback on stderr fails the test whatever else it did."""
    assert WMBUS.is_file(), f"the wmbus-stream entry point is not installed next to {sys.executable}"
    proc = subprocess.run([str(WMBUS), *args], cwd=cwd, input=input, capture_output=True, timeout=timeout,
                          stdin=None if input is not None else subprocess.DEVNULL)
    run = Run(proc)
    assert "Traceback" not in run.err, f"wmbus-stream {shlex.join(args)} ended in a traceback:\n{run!r}"
    return run


def hex_capture(path: Path, count: int = 12) -> list[bytes]:
    """A ``hex`` capture of ``count`` telegrams of different meters; returns the telegrams."""
    telegrams = vector_telegrams(count)
    path.write_bytes(b"".join(PROTOCOLS["hex"].encode(t) for t in telegrams))
    return telegrams


def free_port() -> int:
    """A port of 127.0.0.1 nobody listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def gw(config: ConfigFile, tmp_path: Path) -> ConfigFile:
    """A gateway configuration: a hex capture as its receiver, pushes only by hand, no HES yet."""
    hex_capture(tmp_path / "capture.hex")
    config.write({"receiver.protocol": "hex", "receiver.port": str(tmp_path / "capture.hex"),
                  "receiving.server.push.cron": FAR_AWAY_CRON, "receiving.server.retries": "0",
                  "receiving.server.url": f"http://127.0.0.1:{free_port()}/in"})
    return config


# -------------------------------------------------------------------------------------------
# The parser: help of every command, every command tested


def command_paths() -> list[tuple[str, ...]]:
    """Every command of the parser as its words: ("decode",), ("config", "show"), ..."""
    def walk(parser: argparse.ArgumentParser, words: tuple[str, ...]) -> list[tuple[str, ...]]:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        # A command with subcommands that also runs on its own (``receive``) is a command too.
        own = [words] if not subs or (words and parser.get_default("func") and not all(a.required for a in subs)) else []
        return own + [path for a in subs for name, child in a.choices.items() for path in walk(child, (*words, name))]

    return walk(cli.build_parser(), ())


def test_every_command_is_tested_here() -> None:
    commands = {" ".join(path) for path in command_paths()}
    assert commands - TESTED == set(), "commands without an output test in this module"
    assert TESTED - commands == set(), "tests here name commands the parser does not have"


@pytest.mark.parametrize("words", command_paths(), ids=" ".join)
def test_help_of_every_command_goes_to_stdout(words: tuple[str, ...]) -> None:
    run = wmbus(*words, "--help")
    assert run.code == 0 and run.err == "", run
    assert run.out.startswith(f"usage: wmbus-stream {' '.join(words)}"), run


def test_version_and_top_level_help() -> None:
    run = wmbus("--version")
    assert run.code == 0 and run.err == ""
    assert re.fullmatch(rf"wmbus-stream {re.escape(__version__)} (compiled|pure)\n", run.out), run
    run = wmbus("--help")
    assert run.code == 0 and run.err == "" and "COMMAND" in run.out
    for words in command_paths():
        assert words[0] in run.out
    run = wmbus("nosuch")
    assert run.code == 2 and run.out == "" and "invalid choice: 'nosuch'" in run.err, run


# -------------------------------------------------------------------------------------------
# docs/cli.md's exit-code table, as written


def doc_table() -> list[tuple[str, int, str, str]]:
    """(command line, exit code, stdout text, stderr text) rows of docs/cli.md's exit-code table."""
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    section = text.split("## Output and exit codes", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`wmbus-stream"):
            command, code, out, err = cells
            rows.append((command.strip("`"), int(code), out.strip("`"), err.strip("`")))
    return rows


def test_the_doc_table_covers_every_exit_code() -> None:
    rows = doc_table()
    assert {code for _, code, _, _ in rows} == {0, 1, 2, 3}
    assert len(rows) >= 15


@covers("config check")
@pytest.mark.parametrize(("command", "code", "out", "err"), doc_table(), ids=[row[0] for row in doc_table()])
def test_exit_codes_and_streams_are_as_docs_cli_md_says(tmp_path: Path, command: str, code: int, out: str,
                                                        err: str) -> None:
    (tmp_path / "valid.cfg").write_text(f"receiver.protocol=hex\nstate.directory={tmp_path / 'state'}\n"
                                        f"receiving.server.url=http://127.0.0.1:{free_port()}/in\n")
    (tmp_path / "invalid.cfg").write_text(f"radio.mode=T2\nstate.directory={tmp_path / 'state'}\n")
    words = shlex.split(command)
    assert words[0] == "wmbus-stream"
    run = wmbus(*words[1:], cwd=tmp_path)
    assert run.code == code, f"{command}: docs/cli.md says exit {code}\n{run!r}"
    for shown, stream, name in ((out, run.out, "stdout"), (err, run.err, "stderr")):
        if shown == "—":
            assert stream == "", f"{command}: docs/cli.md says {name} stays empty\n{run!r}"
        else:
            assert shown in stream, f"{command}: docs/cli.md says {name} holds {shown!r}\n{run!r}"


# -------------------------------------------------------------------------------------------
# decode, bench


@covers("decode")
def test_decode_prints_json_lines_and_ends_with_a_summary_on_stderr(tmp_path: Path) -> None:
    telegrams = hex_capture(tmp_path / "capture.hex")
    run = wmbus("decode", "--receiver-address", RECEIVER, str(tmp_path / "capture.hex"))
    assert run.code == 0, run
    objects = [json.loads(line) for line in run.out.splitlines()]
    assert [o["telegram"] for o in objects] == [t.hex().upper() for t in telegrams]
    assert all(o["ok"] for o in objects)
    size = (tmp_path / "capture.hex").stat().st_size
    assert run.err == f"decode: {len(telegrams)} hex frames ({len(telegrams)} ok, 0 broken) in {size} bytes read;" \
                      " 0 bytes skipped\n", run


def test_decode_with_the_wrong_protocol_says_so(tmp_path: Path) -> None:
    hex_capture(tmp_path / "capture.hex")
    size = (tmp_path / "capture.hex").stat().st_size
    run = wmbus("decode", "--protocol", "cmex50", str(tmp_path / "capture.hex"))
    assert run.code == 0 and run.out == "", run
    assert run.err.startswith(f"decode: 0 cmex50 frames (0 ok, 0 broken) in {size} bytes read; {size} bytes skipped;"
                              " no good cmex50 frame found: is --protocol right?"), run
    run = wmbus("decode", "--protocol", "cmex50", input=b"")
    assert run.code == 0 and run.out == "" and "decode: 0 cmex50 frames" in run.err and "right?" not in run.err


@covers("bench")
def test_bench_table_and_json() -> None:
    run = wmbus("bench", "--frames", "2000")
    assert run.code == 0, run
    assert "CPU us/telegram" in run.out and "pipeline, pure" in run.out and "CPU: " in run.out
    run = wmbus("bench", "--frames", "2000", "--json")
    assert run.code == 0, run
    result = json.loads(run.out)
    assert result["frames"] == 2000 and result["twins"]["pure"]["us_per_telegram"] > 0
    run = wmbus("bench", "--frames", "0")
    assert run.code == 2 and run.out == "" and "'0' is not a whole number of at least 1" in run.err, run
    # ``bench --service`` (a minute of full-size measurements, docs/performance.md) is the one output
    # form not run here: the benchmark runs it; its --help is tested above.


# -------------------------------------------------------------------------------------------
# config check and the baud rate in effect


@pytest.mark.parametrize(("protocol", "rate"), [("im871a", 57600), ("amb8465", 9600), ("cmex50", 115200)])
def test_config_check_says_which_baud_rate_is_in_effect(tmp_path: Path, protocol: str, rate: int) -> None:
    path = tmp_path / "stream.cfg"
    path.write_text(f"receiver.protocol={protocol}\nreceiving.server.url=https://hes.example.net/in\n")
    run = wmbus("config", "check", str(path))
    assert run.code == 0 and run.err == "", run
    assert f"usb.baud.rate {rate} Bd: the default for receiver.protocol={protocol}" in run.out, run
    path.write_text(f"receiver.protocol={protocol}\nusb.baud.rate=19200\nreceiving.server.url=https://hes.example.net/in\n")
    run = wmbus("config", "check", "--config", str(path))
    assert run.code == 0 and "usb.baud.rate 19200 Bd: set in the file" in run.out, run


def test_the_gateway_opens_an_im871a_at_57600_unless_told_otherwise(config: ConfigFile, gateway, pty_receiver) -> None:
    config.write({"receiver.protocol": "im871a", "receiver.port": str(pty_receiver.link),
                  "receiving.server.url": f"http://127.0.0.1:{free_port()}/in"})
    process = gateway(config)
    process.wait_log(r"connected \(im871a, 57600 Bd\)")
    assert termios.tcgetattr(pty_receiver.slave)[5] == termios.B57600  # the speed really set on the line
    mark = process.mark()
    config.write({"usb.baud.rate": "115200"})
    process.send_signal(signal.SIGHUP)
    process.wait_log(r"connected \(im871a, 115200 Bd\)", after=mark)
    assert termios.tcgetattr(pty_receiver.slave)[5] == termios.B115200


# -------------------------------------------------------------------------------------------
# configuration management


@covers("config show", "config set", "config export", "config import", "config history", "config revert")
def test_config_management_outputs(tmp_path: Path) -> None:
    path = tmp_path / "stream.cfg"
    path.write_text(f"state.directory={tmp_path / 'state'}\nreceiving.server.password=hunter22\n"
                    "receiving.server.url=https://hes.example.net/in\n")
    cfg = ("--config", str(path))

    run = wmbus("config", "show", *cfg)
    assert run.code == 0 and run.err == "" and "receiving.server.password=********" in run.out, run
    run = wmbus("config", "show", "--all", *cfg)
    assert run.code == 0 and "usb.baud.rate=115200" in run.out and "hunter22" not in run.out, run

    run = wmbus("config", "set", *cfg, "radio.mode=T1", "receiver.protocol=amb8465")
    assert run.code == 0, run
    assert run.out == ("configuration #2 applied and recorded\n"
                       "no gateway is running for this state directory: the file is used at its next start\n"), run
    run = wmbus("config", "set", *cfg, "radio.mode=T1", "receiver.protocol=amb8465")
    assert run.code == 0 and run.out.startswith("configuration unchanged (it is already #2)"), run
    assert "usb.baud.rate 9600 Bd: the default" in wmbus("config", "check", str(path)).out

    run = wmbus("config", "export", *cfg, "-")
    assert run.code == 0 and "radio.mode=T1" in run.out and "password" not in run.out, run
    exported = tmp_path / "export.cfg"
    run = wmbus("config", "export", *cfg, str(exported))
    assert run.code == 0 and run.out == f"exported to {exported}\n" and "radio.mode=T1" in exported.read_text()
    run = wmbus("config", "export", *cfg, str(tmp_path / "no" / "export.cfg"))
    assert run.code == 1 and run.err == f"wmbus-stream config export: cannot use {tmp_path / 'no'}: No such file or" \
                                        " directory\n", run

    run = wmbus("config", "history", *cfg)
    assert run.code == 0 and run.out.splitlines()[0].split() == ["#", "TIME", "(UTC)", "ORIGIN", "NOTE"], run
    assert re.search(r"^\s+2 .* local\s+set radio.mode, receiver.protocol$", run.out, re.M), run
    run = wmbus("config", "history", *cfg, "--show", "1")
    assert run.code == 0 and run.out.startswith("# configuration #1, ") and "hunter22" not in run.out, run
    run = wmbus("config", "history", *cfg, "--show", "99")
    assert run.code == 3 and run.out == "" and "invalid value '99'" in run.err, run

    run = wmbus("config", "revert", *cfg, "1")
    assert run.code == 0 and run.out.startswith("configuration #3 applied and recorded"), run
    assert "radio.mode" not in path.read_text()
    run = wmbus("config", "import", *cfg, str(exported))
    assert run.code == 0 and "applied and recorded" in run.out, run
    assert "radio.mode=T1" in path.read_text() and "hunter22" in path.read_text()  # device keys stay
    run = wmbus("config", "import", *cfg, "-", input=b"radio.mode=T9\n")
    assert run.code == 3 and run.out == "" and "radio.mode: invalid value 'T9'" in run.err, run
    run = wmbus("config", "import", *cfg, str(tmp_path / "missing.cfg"))
    assert run.code == 1 and "cannot read" in run.err, run


@covers("config backup", "config restore")
def test_backup_and_restore_outputs(tmp_path: Path) -> None:
    path = tmp_path / "stream.cfg"
    path.write_text(f"state.directory={tmp_path / 'state'}\ngateway.serial=00000161\n")
    cfg = ("--config", str(path))
    archive = tmp_path / "backup.tar"
    run = wmbus("config", "backup", *cfg, str(archive))
    assert run.code == 0 and re.fullmatch(rf"backup written to {re.escape(str(archive))} \(\d+ bytes\)\n", run.out)
    assert archive.stat().st_mode & 0o777 == 0o600
    run = wmbus("config", "backup", *cfg, "-")
    assert run.code == 0 and run.err == "", run
    (tmp_path / "stdout.tar").write_bytes(run.raw_stdout)
    assert tarfile.is_tarfile(tmp_path / "stdout.tar")
    run = wmbus("config", "restore", *cfg, str(archive))
    assert run.code == 0 and "restored the backup of gateway 00000161" in run.out, run
    assert "no gateway is running for this state directory" in run.out
    (tmp_path / "junk.tar").write_bytes(b"not an archive")
    run = wmbus("config", "restore", *cfg, str(tmp_path / "junk.tar"))
    assert run.code == 3 and run.out == "" and "nothing was changed" in run.err, run
    run = wmbus("config", "restore", *cfg, str(tmp_path / "missing.tar"))
    assert run.code == 1 and "is not a readable file" in run.err, run


@covers("sync")
def test_sync_now_without_a_server_prints_921_and_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "stream.cfg"
    path.write_text(f"state.directory={tmp_path / 'state'}\n")
    run = wmbus("sync", "now", "--config", str(path))
    assert run.code == 1 and run.out == "921 configuration.server.url is not set\n", run


# -------------------------------------------------------------------------------------------
# run, push now, status, analyzer with and without a running gateway


@covers("run")
def test_run_once_pushes_a_capture_and_exits_0_or_1(gw: ConfigFile, hes) -> None:
    run = wmbus("run", "--once", "--config", str(gw.path))
    assert run.code == 1 and run.out == "" and "failed after 1 attempt(s)" in run.err, run
    gw.write({"receiving.server.url": hes.url})
    run = wmbus("run", "--once", "--config", str(gw.path))
    assert run.code == 0 and run.out == "" and re.search(r"acknowledged, 12 lines, HTTP 204", run.err), run
    assert len(hes.lines()) == 12


@covers("push")
def test_push_now_with_no_gateway_says_so_at_once(gw: ConfigFile) -> None:
    run = wmbus("push", "now", "--config", str(gw.path))
    assert run.code == 1 and run.out == "", run
    assert run.err.startswith(f"wmbus-stream push now: no gateway is running at {gw.state / 'control.sock'};"
                              " nothing was pushed."), run
    assert "started" not in run.err and "run --once" in run.err


def test_push_now_through_the_running_gateway(gw: ConfigFile, gateway, hes) -> None:
    process = gateway(gw)
    process.wait_status(lambda s: s["receiver"]["state"] == "finished" and s["meters_pending"] == 12,
                        "the capture read and 12 meters pending")
    run = wmbus("push", "now", "--config", str(gw.path))  # the HES is not listening at the configured URL
    assert run.code == 1, run
    assert run.err.startswith("push now: the running gateway pushes its 12 pending meters to http://127.0.0.1:"), run
    assert re.fullmatch(r"\S+ \S+ UTC: failed after 1 attempt\(s\): connection refused .*; 12 meters kept\n", run.out)

    gw.write({"receiving.server.url": hes.url})
    mark = process.mark()
    process.send_signal(signal.SIGHUP)
    process.wait_log("configuration reloaded", after=mark)
    run = wmbus("push", "now", "--config", str(gw.path))
    assert run.code == 0, run
    assert re.fullmatch(r"\S+ \S+ UTC: acknowledged, 12 lines, HTTP 204, \d+\.\d\d s\n", run.out), run
    assert len(hes.lines()) == 12

    run = wmbus("push", "now", "--config", str(gw.path))
    assert run.code == 0 and "its 0 pending meters" in run.err, run
    assert re.fullmatch(r"\S+ \S+ UTC: nothing pending, nothing sent\n", run.out), run
    assert len(hes.posts) == 1


@covers("status", "analyzer")
def test_status_and_analyzer_of_a_running_then_a_stopped_gateway(gw: ConfigFile, gateway) -> None:
    run = wmbus("analyzer", "--config", str(gw.path))
    assert run.code == 0 and run.err == "", run
    assert run.out == f"no analyzer data yet: no gateway is running for {gw.state} and none saved any\n"
    run = wmbus("analyzer", "--csv", "--config", str(gw.path))
    assert run.code == 0 and run.out.startswith("id,manufacturer,") and len(run.out.splitlines()) == 1, run

    process = gateway(gw)
    process.wait_status(lambda s: s["receiver"]["state"] == "finished", "the capture read")
    run = wmbus("status", "--config", str(gw.path))
    assert run.code == 0 and run.err == "", run
    status = json.loads(run.out)
    assert status["meters_pending"] == 12 and status["receiver"]["protocol"] == "hex"

    ids = sorted(t[7:3:-1].hex() for t in vector_telegrams(12))
    run = wmbus("analyzer", "--config", str(gw.path))
    assert run.code == 0 and run.err == "", run
    lines = run.out.splitlines()
    assert lines[0] == "analyzer of the running gateway"
    assert re.fullmatch(r"since \S+ \S+ UTC: 12 meters found, 12 telegrams ok, 0 broken", lines[1]), run
    assert lines[2].split()[:4] == ["ID", "MAN", "TYPE", "VERDICT"] and lines[2].endswith("FIRST SEEN          LAST SEEN")
    assert sorted(line.split()[0] for line in lines[3:]) == ids
    run = wmbus("analyzer", "--csv", "--config", str(gw.path))
    assert run.code == 0 and sorted(row.split(",")[0] for row in run.out.splitlines()[1:]) == ids

    process.stop()
    run = wmbus("status", "--config", str(gw.path))
    assert run.code == 1 and run.out == "" and "no gateway is running" in run.err, run
    gw.write({"filter.device.id": ids[0]})  # show.only.filtered=true: only this meter, unless --all
    run = wmbus("analyzer", "--config", str(gw.path))
    assert run.code == 0 and run.out.splitlines()[0] == f"analyzer of the state saved in {gw.state} (no gateway is running)"
    assert [line.split()[0] for line in run.out.splitlines()[3:]] == [ids[0]], run
    run = wmbus("analyzer", "--all", "--config", str(gw.path))
    assert run.code == 0 and len(run.out.splitlines()[3:]) == 12, run
    gw.write({"filter.device.id": "99999999"})
    run = wmbus("analyzer", "--config", str(gw.path))
    assert run.code == 0 and run.out.splitlines()[2:] == [
        "no meters heard in this period (show.only.filtered=true hides meters outside filter.device.id;"
        " --all shows them)"], run


# -------------------------------------------------------------------------------------------
# replay, receive


@covers("replay")
def test_replay_prints_writes_or_pushes_the_report(gw: ConfigFile, tmp_path: Path, hes) -> None:
    capture = str(tmp_path / "capture.hex")
    run = wmbus("replay", "--config", str(gw.path), capture)
    assert run.code == 0 and run.err == "replay: ok 12, read 12; 12 meters in the report\n", run
    assert len(parse_report(run.raw_stdout)) == 12
    report = tmp_path / "report.txt"
    run = wmbus("replay", "--config", str(gw.path), capture, "--report", str(report))
    assert run.code == 0 and run.out == "" and len(parse_report(report.read_bytes())) == 12, run
    run = wmbus("replay", "--config", str(gw.path), capture, "--push")
    assert run.code == 1 and run.out == "" and "replay push: failed" in run.err, run
    gw.write({"receiving.server.url": hes.url})
    run = wmbus("replay", "--config", str(gw.path), capture, "--push")
    assert run.code == 0 and run.out == "" and "replay push: acknowledged" in run.err, run
    assert len(hes.lines()) == 12
    assert not gw.state.exists()  # a replay never touches the gateway's state


@covers("receive credentials add", "receive credentials list", "receive credentials remove")
def test_receive_takes_each_gateway_with_its_own_credential(gw: ConfigFile, tmp_path: Path) -> None:
    gateways = tmp_path / "gateways"
    added = wmbus("receive", "credentials", "add", "00000161", "--gateways", str(gateways))
    assert added.code == 0 and "shown only now" in added.out, added
    password = re.search(r"password (\S+)", added.out).group(1)
    assert wmbus("receive", "credentials", "add", "00000162", "--gateways", str(gateways)).code == 0
    assert wmbus("receive", "credentials", "list", "--gateways", str(gateways)).out == "00000161\n00000162\n"
    port = free_port()
    server = subprocess.Popen([str(WMBUS), "receive", "--listen", f"127.0.0.1:{port}", "--gateways", str(gateways)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        assert "per-gateway credentials" in server.stdout.readline()
        url = f"http://127.0.0.1:{port}/in"
        gw.write({"receiving.server.url": url, "receiving.server.username": "00000162",
                  "receiving.server.password": password})  # gateway 00000161's password under another serial
        refused = wmbus("replay", "--config", str(gw.path), str(tmp_path / "capture.hex"), "--push")
        assert refused.code != 0 and "401" in refused.out + refused.err, refused
        gw.write({"receiving.server.url": url, "receiving.server.username": "00000161",
                  "receiving.server.password": password})
        assert wmbus("replay", "--config", str(gw.path), str(tmp_path / "capture.hex"), "--push").code == 0
        assert "12 lines, 12 new readings, gateway 00000161" in server.stdout.readline()
        removed = wmbus("receive", "credentials", "remove", "00000162", "--gateways", str(gateways))
        assert removed.code == 0 and "removed gateway 00000162" in removed.out, removed
        assert wmbus("receive", "credentials", "list", "--gateways", str(gateways)).out == "00000161\n"
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert server.returncode == 0 and out.startswith("stopped: 1 POSTs, 12 lines"), out + err


@covers("receive")
def test_receive_serves_until_sigterm(gw: ConfigFile, tmp_path: Path) -> None:
    port = free_port()
    db = tmp_path / "hes.sqlite"
    (tmp_path / "password").write_text("Kestrel-Harbour-42\n")
    server = subprocess.Popen([str(WMBUS), "receive", "--listen", f"127.0.0.1:{port}", "--db", str(db),
                               "--username", "gw", "--password-file", str(tmp_path / "password")],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        first = server.stdout.readline()
        assert first.startswith(f"receiving reports on http://127.0.0.1:{port}") and f"SQLite {db}" in first, first
        gw.write({"receiving.server.url": f"http://127.0.0.1:{port}/in", "receiving.server.username": "gw",
                  "receiving.server.password": "Kestrel-Harbour-42"})
        assert wmbus("replay", "--config", str(gw.path), str(tmp_path / "capture.hex"), "--push").code == 0
        post = server.stdout.readline()
        assert re.search(r"POST /in: 12 lines, 12 new readings, gateway 00000161", post), post
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert server.returncode == 0 and "Traceback" not in err, err
    assert out.startswith("stopped: 1 POSTs, 12 lines, 12 new readings"), out
    run = wmbus("receive", "--listen", "127.0.0.1:1", "--no-auth", "--tls-key", str(tmp_path / "key.pem"))
    assert run.code == 2 and run.out == "" and "--tls-key needs --tls-cert" in run.err, run
    run = wmbus("receive", "--listen", "127.0.0.1:1")
    assert run.code == 2 and run.out == "" and "refusing to start without authentication" in run.err, run
    run = wmbus("receive", "--listen", "127.0.0.1:1", "--username", "gw", "--password-file", str(tmp_path / "none"))
    assert run.code == 1 and run.out == "" and f"cannot read {tmp_path / 'none'}" in run.err, run


@covers("receive coverage")
def test_receive_coverage_lists_the_meters_below_a_threshold(gw: ConfigFile, tmp_path: Path) -> None:
    import sqlite3

    from wmbus_stream.hes import ReceiveServer, SqliteStore

    db = tmp_path / "hes.sqlite"
    store = SqliteStore(str(db))
    try:
        with ReceiveServer(store=store) as server:
            gw.write({"receiving.server.url": server.url})
            assert wmbus("replay", "--config", str(gw.path), str(tmp_path / "capture.hex"), "--push").code == 0
    finally:
        store.close()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        ((gateway, last),) = conn.execute("SELECT gateway, MAX(heard_at) FROM heard_by GROUP BY gateway").fetchall()
    until = (datetime.strptime(last, "%Y-%m-%d %H:%M:%S") + timedelta(seconds=1)).strftime("%Y-%m-%d %H:%M:%S")
    run = wmbus("receive", "coverage", "--db", str(db), "--until", until, "--window", "24h", "--resolution", "1h")
    assert run.code == 0 and run.err == "", run
    lines = run.out.splitlines()
    assert lines[0].endswith("(24h) at 1h: 24 intervals; wanted: at least 2 gateways and a reading in at least 98 %"
                             " of intervals"), run
    assert lines[1] == "meters below a threshold (12):" and len(lines) == 12 + 5, run
    assert all(re.fullmatch(rf"  [A-Z]{{3}} [0-9A-F]{{8}} v[0-9A-F]{{2}} type [0-9A-F]{{2}}: 1 gateway \({gateway} -?\d+ dBm\),"
                            r" reception 4\.1 % \(1 of 24\); below: heard by 1 gateway, 2 wanted; reception 4\.1 % at 1h,"
                            r" 98 % wanted", line) for line in lines[2:14]), run
    assert lines[14] == "only heard by one gateway (12):" and lines[15].startswith(f"  {gateway} (12): "), run
    assert lines[16] == ("summary: 12 meters heard by 1 gateway; 12 below a threshold (12 by fewer than 2 gateways,"
                         " 12 under 98 % at 1h)"), run
    run = wmbus("receive", "coverage", "--db", str(db), "--until", until, "--json", "--min-gateways", "1",
                "--min-reception", "0")
    doc = json.loads(run.out)
    assert run.code == 0 and doc["meters"] == [] and doc["summary"]["meters"] == 12, run
    run = wmbus("receive", "coverage", "--db", str(db), "--window", "1h", "--resolution", "24h")
    assert run.code == 2 and run.out == "" and "--resolution 24h is longer than --window 1h" in run.err, run
    run = wmbus("receive", "coverage", "--db", str(tmp_path / "none.sqlite"))
    assert run.code == 1 and run.out == "" and "no such file" in run.err, run


# -------------------------------------------------------------------------------------------
# the appliance: provision, update (tests/unit/test_provision.py and test_update_slots.py have the rest)

DOUBLES = Path(__file__).resolve().parents[1] / "doubles"


@covers("provision")
def test_provision_outputs(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    (tmp_path / "sys/etc").mkdir(parents=True)
    (tmp_path / "sys/etc/machine-id").write_text("4f1c0c3b8e2b4a8d9c7e6f5a4b3c2d1e\n")
    (tmp_path / "defaults.cfg").write_text("receiving.server.url=https://hes.example.net/in\n")
    args = ["provision", "--boot", str(tmp_path / "boot"), "--sys", str(tmp_path / "sys"), "--data",
            str(tmp_path / "data"), "--config", str(tmp_path / "cfg/stream.cfg"), "--state", str(tmp_path / "state"),
            "--defaults", str(tmp_path / "defaults.cfg")]
    run = wmbus(*args)
    assert run.code == 0 and run.err == "", run
    assert re.match(r"gateway serial \d{8} \(from machine-id\), host name wmbus-\d{8}\n", run.out), run
    assert run.out.endswith(" file(s) written or removed\n")
    assert wmbus(*args).out.endswith("\nnothing to change\n")
    (tmp_path / "boot/wmbus-stream.cfg").write_text("provision.colour=blue\n")
    run = wmbus(*args)
    assert run.code == 3 and "provision.colour: invalid value '********'; allowed: a provisioning key" in run.err, run  # unknown: masked


@covers("update status", "update install", "update rollback", "update confirm")
def test_update_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    slot = {"class": "rootfs", "type": "raw", "parent": None, "mountpoint": None, "boot_status": "good",
            "slot_status": {"bundle": {"compatible": None}}}
    status = {"compatible": "wmbus-stream-arm64", "variant": "", "booted": "A", "boot_primary": "rootfs.0", "slots": [
        {"rootfs.1": {**slot, "device": "/dev/vda3", "bootname": "B", "state": "inactive"}},
        {"rootfs.0": {**slot, "device": "/dev/vda2", "bootname": "A", "state": "booted"}}]}
    (tmp_path / "rauc.json").write_text(json.dumps({"status": status}))
    (tmp_path / "systemctl.json").write_text(json.dumps({"answers": ["active"]}))
    monkeypatch.setenv("WMBUS_STREAM_RAUC", str(DOUBLES / "rauc"))
    monkeypatch.setenv("WMBUS_STREAM_SYSTEMCTL", str(DOUBLES / "systemctl"))
    monkeypatch.setenv("RAUC_DOUBLE_STATE", str(tmp_path / "rauc.json"))
    monkeypatch.setenv("SYSTEMCTL_DOUBLE_STATE", str(tmp_path / "systemctl.json"))
    run = wmbus("update", "status")
    assert run.code == 0 and run.err == "" and run.out.startswith("booted:    slot A\n"), run
    assert json.loads(wmbus("update", "status", "--json").out)["activated"] == "A"
    (tmp_path / "b.raucb").write_bytes(b"bundle")
    run = wmbus("update", "install", str(tmp_path / "b.raucb"))
    assert run.code == 0 and run.out.endswith("; reboot to start slot B\n") and "installing" in run.err, run
    run = wmbus("update", "rollback")
    assert run.code == 0 and run.out.startswith("slot A (rootfs.0) is activated"), run
    run = wmbus("update", "confirm", "--within", "0", "--data", str(tmp_path / "data"))
    assert run.code == 0 and run.out == "slot A marked good: wmbus-stream.service is ready\n", run
    run = wmbus("update", "confirm", "--within", "-1")
    assert run.code == 2 and "argument --within: '-1' is not a number of seconds" in run.err, run


# -------------------------------------------------------------------------------------------
# demo, systemd-unit, passwd, a closed pipe


@covers("demo")
def test_demo_runs_and_stops_cleanly() -> None:
    run = wmbus("demo", "--meters", "20", "--seconds", "2")
    assert run.code == 0, run
    assert run.out.startswith("wmbus-stream demo: 20 simulated meters") and "stopped cleanly" in run.out, run
    run = wmbus("demo", "--meters", "0")
    assert run.code == 2 and run.out == "" and "argument --meters" in run.err, run


@covers("systemd-unit")
def test_systemd_unit_points_at_this_installation() -> None:
    run = wmbus("systemd-unit")
    assert run.code == 0 and run.err == "", run
    assert f"ExecStart={WMBUS} run" in run.out and "[Service]" in run.out


@covers("passwd")
def test_passwd_outputs(tmp_path: Path) -> None:
    path = tmp_path / "stream.cfg"
    path.write_text(f"state.directory={tmp_path / 'state'}\n")
    (tmp_path / "state").mkdir()
    run = wmbus("passwd", "--config", str(path), "--random")
    assert run.code == 0 and re.fullmatch(r"web UI user admin, password \S+  \(shown once.*\)\n", run.out), run
    assert run.err == f"password for admin set in {tmp_path / 'state' / 'web-password'}; open sessions end at once\n"
    run = wmbus("passwd", "--config", str(path), "--stdin", input=b"short\n")
    assert run.code == 1 and run.out == "" and "at least" in run.err and "nothing changed" in run.err, run
    run = wmbus("passwd", "--config", str(path), "--stdin", "--user", "site7", input=b"Kestrel-Harbour-42\n")
    assert run.code == 0 and run.out == "" and "password for site7 set in" in run.err, run


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path: Path) -> None:
    path = tmp_path / "stream.cfg"
    path.write_text(f"state.directory={tmp_path / 'state'}\n")
    read_end, write_end = os.pipe()
    os.close(read_end)  # like ``| head`` that has already exited: every write fails with EPIPE
    try:
        proc = subprocess.run([str(WMBUS), "config", "show", "--all", "--config", str(path)], stdout=write_end,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=60)
    finally:
        os.close(write_end)
    assert proc.returncode == 1 and proc.stderr == b"", proc.stderr

