"""Life cycle of the running gateway: kill -9, SIGHUP, SIGTERM, and the one-shot commands.

The gateway is a real process; kill -9 is ``os.kill(pid, SIGKILL)``; the state directory is
a real SQLite database that the restarted process opens again. Nothing acknowledged by a
2xx may come back, nothing not acknowledged may be lost (at-least-once, latest value).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import urllib3

from gwkit import (
    PROTOCOLS,
    Hang,
    Respond,
    assert_report,
    caught,
    cron_at,
    pairs,
    run_cli,
    soon,
    variant,
    vector_telegrams,
    wait_for,
)

pytestmark = pytest.mark.integration

CMEX50 = PROTOCOLS["cmex50"]
# One slot a year: no scheduled push during the test (only what the test triggers).
NEVER = cron_at(datetime.now(UTC) - timedelta(days=1))


# -------------------------------------------------------------------------------------------
# kill -9


def test_kill9_after_a_flush_before_the_push_loses_nothing(config, pty_receiver, hes, gateway) -> None:
    telegrams = vector_telegrams(40)
    config.write({"receiver.port": str(pty_receiver.link), "receiving.server.url": hes.url,
                  "receiving.server.push.cron": NEVER})
    since = time.time()
    gw = gateway(config)
    gw.wait_connected()
    pty_receiver.write(b"".join(CMEX50.encode(t) for t in telegrams))
    gw.wait_ok(len(telegrams))
    wait_for(lambda: config.pending_on_disk() == len(telegrams), "the flush of every telegram", 5)
    gw.kill9()
    assert gw.proc.returncode == -signal.SIGKILL and hes.posts == []

    config.write({"receiving.server.push.cron": "* * * * * *"})
    again = gateway(config)
    again.wait_log(rf"started: serial 00000161, {len(telegrams)} meters pending")
    posts = hes.wait_posts(1, context=again.tail)
    again.wait_status(lambda s: s["meters_pending"] == 0, "nothing pending")
    assert_report(posts[0], pairs(CMEX50, telegrams), since=since)
    assert config.pending_on_disk() == 0


def test_kill9_during_a_push_then_restart_pushes_everything(config, pty_receiver, scripted_hes, gateway) -> None:
    server = scripted_hes(Hang(seconds=30), Respond(204))
    telegrams = vector_telegrams(40)
    config.write({"receiver.port": str(pty_receiver.link), "receiving.server.url": server.url,
                  "receiving.server.push.cron": cron_at(soon(2)), "receiving.server.read.timeout": "20"})
    since = time.time()
    gw = gateway(config)
    gw.wait_connected()
    pty_receiver.write(b"".join(CMEX50.encode(t) for t in telegrams))
    gw.wait_ok(len(telegrams))
    first = server.wait_requests(1, context=gw.tail)[0]  # the HES has the body, the push waits for its answer
    assert_report(first.lines(), pairs(CMEX50, telegrams), since=since)
    assert gw.status()["push_in_flight"]
    gw.kill9()

    config.write({"receiving.server.push.cron": "* * * * * *"})
    again = gateway(config)
    again.wait_log(rf"{len(telegrams)} meters pending")
    second = server.wait_requests(2, context=again.tail)[1]
    again.wait_status(lambda s: s["meters_pending"] == 0, "nothing pending")
    assert second.answered == 204
    assert second.body == first.body  # the same report again, arrival dates included
    assert config.pending_on_disk() == 0


# -------------------------------------------------------------------------------------------
# SIGHUP


def test_invalid_configuration_on_sighup_is_refused_and_the_old_one_keeps_running(config, pty_receiver, hes, gateway) -> None:
    telegrams = vector_telegrams(10)
    hes.down()
    config.write({"receiver.port": str(pty_receiver.link), "receiving.server.url": hes.url})
    since = time.time()
    gw = gateway(config)
    gw.wait_connected()
    pty_receiver.write(b"".join(CMEX50.encode(t) for t in telegrams))
    gw.wait_ok(len(telegrams))
    gw.wait_status(lambda s: s["pushes"]["failed"] >= 1, "a failed push (HES down)")

    mark = gw.mark()
    good_text = config.path.read_text()
    config.write_raw(good_text.replace("receiving.server.push.cron=* * * * * *", "receiving.server.push.cron=every minute")
                     + "receiving.server.retries=lots\n")
    gw.send_signal(signal.SIGHUP)
    gw.wait_log(r"reload refused: receiving\.server\.push\.cron: invalid value 'every minute'", after=mark)
    gw.wait_log(r"reload refused: receiving\.server\.retries: invalid value 'lots'", after=mark)
    gw.wait_log("keeping the running configuration", after=mark)
    status = gw.status()
    assert status["meters_pending"] == len(telegrams) and gw.alive()
    failed = status["pushes"]["failed"]
    gw.wait_status(lambda s: s["pushes"]["failed"] > failed, "pushes going on at the old schedule")

    hes.up()
    posts = hes.wait_posts(1, context=gw.tail)
    gw.wait_status(lambda s: s["meters_pending"] == 0, "nothing pending")
    assert_report(posts[0], pairs(CMEX50, telegrams), since=since)
    assert not gw.find("configuration reloaded")


def test_valid_filter_change_on_sighup_applies_to_new_telegrams_and_keeps_pending(config, pty_receiver, hes, gateway) -> None:
    elv, els = vector_telegrams(2)  # manufacturers ELV and ELS
    hes.down()
    config.write({"receiver.port": str(pty_receiver.link), "receiving.server.url": hes.url})
    since = time.time()
    gw = gateway(config)
    gw.wait_connected()
    pty_receiver.write(CMEX50.encode(elv) + CMEX50.encode(els))
    gw.wait_ok(2)
    gw.wait_status(lambda s: s["pushes"]["failed"] >= 1, "a failed push (HES down)")

    mark = gw.mark()
    config.write({"filter.manufacturer": "ELV"})
    gw.send_signal(signal.SIGHUP)
    line = gw.wait_log("configuration reloaded", after=mark)
    assert "receiver restarted" not in line
    elv_new, els_new = variant(elv, 1), variant(els, 1)
    pty_receiver.write(CMEX50.encode(elv_new) + CMEX50.encode(els_new))
    status = gw.wait_status(lambda s: s["telegrams"]["read"] == 4, "the two new telegrams read")
    assert status["telegrams"]["ok"] == 3 and status["telegrams"]["filter.manufacturer"] == 1
    assert status["meters_pending"] == 2

    hes.up()
    posts = hes.wait_posts(1, context=gw.tail)
    gw.wait_status(lambda s: s["meters_pending"] == 0, "nothing pending")
    # The ELS reading accepted before the change is not dropped; the one after it is filtered.
    assert_report(posts[0], pairs(CMEX50, [elv_new, els]), since=since)


def test_read_only_configuration_folder_runs_and_refuses_changes_clearly(tmp_path, pty_receiver, hes, gateway) -> None:
    """A.7 #29: /etc read-only, state writable: the gateway runs and pushes; a change is refused clearly."""
    import os

    from gwkit import ConfigFile

    etc = tmp_path / "etc"
    etc.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(etc)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not permitted here: {mounted.stderr.strip()}")
    try:
        config = ConfigFile(etc)
        config.state = tmp_path / "state"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            web = f"127.0.0.1:{probe.getsockname()[1]}"
        config.write({"receiver.port": str(pty_receiver.link), "receiving.server.url": hes.url,
                      "web.enabled": "true", "web.listen": web})
        assert run_cli("passwd", "--config", str(config.path), "--stdin", input=b"a long field passphrase\n").returncode == 0
        subprocess.run(["mount", "-o", "remount,ro", str(etc)], check=True)
        before = config.path.read_bytes()
        telegrams = vector_telegrams(5)
        since = time.time()
        gw = gateway(config)
        gw.wait_connected()
        pty_receiver.write(b"".join(CMEX50.encode(t) for t in telegrams))
        posts = hes.wait_posts(1, context=gw.tail)
        assert_report(posts[0], pairs(CMEX50, telegrams), since=since)

        refused = run_cli("config", "set", "filter.manufacturer=ELV", "--config", str(config.path))
        assert refused.returncode != 0
        message = refused.stderr.decode()
        assert "read-only" in message.lower() and "Traceback" not in message, message
        assert config.path.read_bytes() == before
        # The web API says the same, as JSON, instead of an internal error.
        auth = urllib3.make_headers(basic_auth="admin:a long field passphrase")
        answer = urllib3.request("PATCH", f"http://{web}/api/v1/config", json={"changes": {"filter.manufacturer": "ELV"}},
                                 headers=auth, retries=False)
        assert answer.status == 409, answer.data
        assert answer.json()["error"] == "storage" and "Read-only file system" in answer.json()["reason"]
        assert config.path.read_bytes() == before
        gw.send_signal(signal.SIGHUP)
        gw.wait_log("configuration reloaded")
        assert gw.alive()
    finally:
        subprocess.run(["umount", "-l", str(etc)], capture_output=True)


# -------------------------------------------------------------------------------------------
# SIGTERM


def test_sigterm_flushes_state_and_exits_0_within_10_s(config, pty_receiver, hes, gateway) -> None:
    telegrams = vector_telegrams(20)
    hes.down()
    # No periodic flush during the test: only the shutdown flush can save the telegrams.
    config.write({"receiver.port": str(pty_receiver.link), "receiving.server.url": hes.url,
                  "store.flush.seconds": "3600"})
    since = time.time()
    gw = gateway(config)
    gw.wait_connected()
    pty_receiver.write(b"".join(CMEX50.encode(t) for t in telegrams))
    gw.wait_ok(len(telegrams))
    assert config.pending_on_disk() == 0
    gw.send_signal(signal.SIGTERM)
    assert gw.wait_exit(timeout=10) == 0
    assert gw.find(rf"stopped: {len(telegrams)} meters pending, state flushed")
    assert config.pending_on_disk() == len(telegrams)

    hes.up()
    config.write({"store.flush.seconds": "0.2"})
    again = gateway(config)
    again.wait_log(rf"{len(telegrams)} meters pending")
    posts = hes.wait_posts(1, context=again.tail)
    assert_report(posts[0], pairs(CMEX50, telegrams), since=since)


def test_sigterm_with_a_push_hanging_on_the_hes_exits_within_10_s_and_keeps_the_data(config, pty_receiver, scripted_hes, gateway) -> None:
    """A.7 #38 with the default push timeouts (connect 10 s, read 30 s) and a HES that never answers."""
    server = scripted_hes(Hang(seconds=60))
    telegrams = vector_telegrams(10)
    config.write({"receiver.port": str(pty_receiver.link), "receiving.server.url": server.url,
                  "receiving.server.push.cron": cron_at(soon(2)), "receiving.server.connect.timeout": None,
                  "receiving.server.read.timeout": None, "receiving.server.retries": None})
    gw = gateway(config)
    gw.wait_connected()
    pty_receiver.write(b"".join(CMEX50.encode(t) for t in telegrams))
    gw.wait_ok(len(telegrams))
    server.wait_requests(1, context=gw.tail)
    gw.wait_status(lambda s: s["push_in_flight"], "the push in flight")
    gw.send_signal(signal.SIGTERM)
    assert gw.wait_exit(timeout=10) == 0
    assert gw.find("push still in flight at stop: abandoned; its meters stay pending")
    assert config.pending_on_disk() == len(telegrams)


# -------------------------------------------------------------------------------------------
# One-shot commands


def test_run_once_with_a_capture_file(config, hes, tmp_path) -> None:
    first, later = vector_telegrams(25)[:20], vector_telegrams(25)[20:]
    capture = tmp_path / "capture.cmex50"
    capture.write_bytes(b"\x00garbage\x68\x03" + b"".join(CMEX50.encode(t) for t in first) + b"\x68\x10\x10")
    config.write({"receiver.port": str(capture), "receiving.server.url": hes.url,
                  "receiving.server.retries": "1"})
    since = time.time()
    done = run_cli("run", "--config", str(config.path), "--once")
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    assert len(hes.posts) == 1
    assert_report(hes.posts[0], pairs(CMEX50, first), since=since)
    assert config.pending_on_disk() == 0

    # HES down: exit 1, the data stays in the state directory for the next run.
    hes.down()
    capture.write_bytes(b"".join(CMEX50.encode(t) for t in later))
    done = run_cli("run", "--config", str(config.path), "--once")
    assert done.returncode == 1, done.stderr.decode()
    assert b"refused" in done.stderr
    assert config.pending_on_disk() == len(later)

    hes.up()
    capture.write_bytes(b"")
    done = run_cli("run", "--config", str(config.path), "--once")
    assert done.returncode == 0, done.stderr.decode()
    assert len(hes.posts) == 2
    assert_report(hes.posts[1], pairs(CMEX50, later), since=since)


def test_push_now_without_a_running_gateway_pushes_nothing_and_keeps_the_saved_state(config, hes, tmp_path) -> None:
    telegrams = vector_telegrams(5)
    capture = tmp_path / "capture.cmex50"
    capture.write_bytes(b"".join(CMEX50.encode(t) for t in telegrams))
    hes.down()
    config.write({"receiver.port": str(capture), "receiving.server.url": hes.url, "receiving.server.retries": "0"})
    since = time.time()
    assert run_cli("run", "--config", str(config.path), "--once").returncode == 1
    hes.up()
    refused = run_cli("push", "now", "--config", str(config.path))
    assert refused.returncode == 1 and refused.stdout == b""
    assert b"no gateway is running at " in refused.stderr and b"nothing was pushed" in refused.stderr
    assert hes.posts == [] and config.pending_on_disk() == 5
    done = run_cli("run", "--config", str(config.path), "--once")  # what the message offers
    assert done.returncode == 0, done.stderr.decode()
    assert_report(hes.posts[0], pairs(CMEX50, telegrams), since=since)
    assert config.pending_on_disk() == 0


def test_push_now_against_a_running_gateway(config, pty_receiver, hes, gateway) -> None:
    telegrams = vector_telegrams(15)
    config.write({"receiver.port": str(pty_receiver.link), "receiving.server.url": hes.url,
                  "receiving.server.push.cron": NEVER})
    since = time.time()
    gw = gateway(config)
    gw.wait_connected()
    pty_receiver.write(b"".join(CMEX50.encode(t) for t in telegrams))
    gw.wait_ok(len(telegrams))
    assert hes.posts == []
    done = run_cli("push", "now", "--config", str(config.path))
    assert done.returncode == 0, done.stderr.decode() + gw.tail()
    assert f"acknowledged, {len(telegrams)} lines".encode() in done.stdout
    assert len(hes.posts) == 1
    assert_report(hes.posts[0], pairs(CMEX50, telegrams), since=since)
    status = gw.status()
    assert status["meters_pending"] == 0 and status["pushes"] == {"ok": 1, "failed": 0}


def test_push_now_while_a_push_is_in_flight_does_not_start_a_second_one(config, pty_receiver, scripted_hes, gateway) -> None:
    """A.7 #22: never more than one push in flight, also when pushes are asked for by hand."""
    hang = Hang(then=204)
    server = scripted_hes(hang, Respond(204))
    telegrams = vector_telegrams(5)
    config.write({"receiver.port": str(pty_receiver.link), "receiving.server.url": server.url,
                  "receiving.server.push.cron": NEVER, "receiving.server.read.timeout": "20"})
    since = time.time()
    gw = gateway(config)
    gw.wait_connected()
    pty_receiver.write(b"".join(CMEX50.encode(t) for t in telegrams))
    gw.wait_ok(len(telegrams))
    first = subprocess.Popen([sys.executable, "-m", "wmbus_stream", "push", "now", "--config", str(config.path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        server.wait_requests(1, context=gw.tail)
        gw.wait_status(lambda s: s["push_in_flight"], "the push shown as in flight")
        second = run_cli("push", "now", "--config", str(config.path))
        assert second.returncode == 1
        assert b"already in flight" in second.stderr
        assert server.max_active == 1 and len(server.requests) == 1
        hang.release.set()
        out, err = first.communicate(timeout=20)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 0, err.decode()
    assert f"acknowledged, {len(telegrams)} lines".encode() in out
    assert_report(server.requests[0].lines(), pairs(CMEX50, telegrams), since=since)
    assert gw.status()["meters_pending"] == 0


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_replay_prints_the_expected_report(source, config, tmp_path) -> None:
    proto = PROTOCOLS["hex"]
    telegrams = vector_telegrams(12)
    newer = variant(telegrams[0], 3)
    capture = tmp_path / "capture.hex"
    capture.write_bytes(b"# a capture\n" + b"".join(proto.encode(t) for t in telegrams) + b"nonsense\n"
                        + proto.encode(newer))
    config.write({"receiver.protocol": "hex", "receiver.port": "/dev/null"})
    since = time.time()
    if source == "file":
        done = run_cli("replay", "--config", str(config.path), str(capture), "--report", "-")
    else:
        done = run_cli("replay", "--config", str(config.path), "-", "--report", "-", input=capture.read_bytes())
    assert done.returncode == 0, done.stderr.decode()
    assert_report(done.stdout.splitlines(keepends=True), pairs(proto, [newer, *telegrams[1:]]), since=since)
    assert f"{len(telegrams)} meters in the report".encode() in done.stderr


# -------------------------------------------------------------------------------------------
# Signals from the first instant, configuration files that could block, file modes


def test_sighup_from_the_first_instant_never_kills_the_gateway_and_is_applied_once_ready(config, pty_receiver, hes, gateway) -> None:
    """Field readiness #4: SIGHUPs from process start on (before the heavy imports) queue a reload."""
    config.write({"receiver.port": str(pty_receiver.link), "receiving.server.url": hes.url})
    gw = gateway(config, wait=False)
    # Python itself needs a few milliseconds before any program code runs; from the moment the
    # command's first line has run, nothing of the gateway may have started yet.
    wait_for(lambda: caught(gw.pid, signal.SIGHUP) or not gw.alive(), "a SIGHUP handler", 15, interval=0.001)
    assert gw.alive(), gw.tail()
    assert not config.state.exists(), "the SIGHUP handler came only after the gateway had begun to start"
    sent = 0
    while not gw.find(r"wmbus-stream .* started"):
        assert gw.alive(), f"killed by SIGHUP number {sent + 1} (exit {gw.proc.returncode}){gw.tail()}"
        gw.send_signal(signal.SIGHUP)
        sent += 1
        time.sleep(0.002)
    assert sent > 0
    gw.wait_log("configuration reloaded")
    gw.wait_connected()
    gw.send_signal(signal.SIGTERM)
    assert gw.wait_exit() == 0


def test_sigterm_before_the_gateway_is_ready_is_a_clean_stop(config, pty_receiver, hes, gateway) -> None:
    config.write({"receiver.port": str(pty_receiver.link), "receiving.server.url": hes.url})
    gw = gateway(config, wait=False)
    wait_for(lambda: caught(gw.pid, signal.SIGTERM) or not gw.alive(), "a SIGTERM handler", 15, interval=0.001)
    assert not config.state.exists(), "the SIGTERM handler came only after the gateway had begun to start"
    gw.send_signal(signal.SIGTERM)
    assert gw.wait_exit() == 0, gw.tail()


def test_a_fifo_as_configuration_is_refused_on_sighup_and_the_main_loop_goes_on(config, pty_receiver, hes, gateway, tmp_path) -> None:
    """Field readiness #3: a reload from a FIFO used to block the main loop (no flush, push, watchdog)."""
    config.write({"receiver.port": str(pty_receiver.link), "receiving.server.url": hes.url})
    gw = gateway(config)
    gw.wait_connected()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    os.replace(fifo, config.path)
    mark = gw.mark()
    gw.send_signal(signal.SIGHUP)
    gw.wait_log(r"reload refused: <file>: invalid value '.*stream\.cfg'; allowed: a regular file of at most"
                r" 1048576 bytes \(this is a FIFO\)", after=mark)
    telegrams = vector_telegrams(3)
    since = time.time()
    pty_receiver.write(b"".join(CMEX50.encode(t) for t in telegrams))
    posts = hes.wait_posts(1, context=gw.tail)  # flushes and pushes go on with the running configuration
    assert_report(posts[0], pairs(CMEX50, telegrams), since=since)


def _kinds(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    fifo = tmp_path / "a.fifo"
    os.mkfifo(fifo)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "a.sock"))  # the socket file stays after the close
    big = tmp_path / "big.cfg"
    with big.open("wb") as handle:
        handle.truncate(2 * 1024 * 1024)
    return {"fifo": (fifo, "this is a FIFO"), "device": (Path("/dev/zero"), "this is a character device"),
            "socket": (tmp_path / "a.sock", "this is a socket"), "folder": (tmp_path, "this is a folder"),
            "huge": (big, f"this one has {2 * 1024 * 1024} bytes")}


@pytest.mark.parametrize("kind", ["fifo", "device", "socket", "folder", "huge"])
def test_config_check_and_import_refuse_what_is_not_a_small_regular_file(kind, config, tmp_path) -> None:
    path, what = _kinds(tmp_path)[kind]
    config.write({})
    for args in (("config", "check", str(path)), ("config", "import", str(path), "--config", str(config.path))):
        done = run_cli(*args, timeout=20)
        message = done.stderr.decode() + done.stdout.decode()
        assert done.returncode == 3, message
        assert f"<file>: invalid value '{path}'; allowed: a regular file of at most 1048576 bytes ({what})" in message


def _modes(folder: Path) -> dict[str, str]:
    """Every entry below ``folder`` with its kind and permission bits, e.g. ``store.sqlite-wal: 0o600``."""
    out = {}
    for root, dirs, names in os.walk(folder):
        for name in dirs + names:
            path = Path(root) / name
            st = path.lstat()
            kind = "dir" if stat.S_ISDIR(st.st_mode) else "socket" if stat.S_ISSOCK(st.st_mode) else "file"
            out[str(path.relative_to(folder))] = f"{kind} {oct(stat.S_IMODE(st.st_mode))}"
    return out


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_every_file_the_gateway_makes_is_0600_whatever_the_umask(umask, config, pty_receiver, hes, gateway, tmp_path) -> None:
    """Field readiness #6 / trust boundaries #12: store, -wal/-shm, lock, socket, history, password, backups."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        web = f"127.0.0.1:{probe.getsockname()[1]}"
    config.write({"receiver.port": str(pty_receiver.link), "receiving.server.url": hes.url,
                  "web.enabled": "true", "web.listen": web})
    backup = tmp_path / "gateway.backup"
    old = os.umask(umask)  # every process below inherits it
    try:
        assert run_cli("passwd", "--config", str(config.path), "--stdin", input=b"a long field passphrase\n").returncode == 0
        gw = gateway(config)
        gw.wait_connected()
        pty_receiver.write(b"".join(CMEX50.encode(t) for t in vector_telegrams(3)))
        hes.wait_posts(1, context=gw.tail)
        first = _modes(config.state)  # before a restore puts files of its own in place
        assert run_cli("config", "set", "filter.manufacturer=ELV", "--config", str(config.path)).returncode == 0
        assert run_cli("config", "backup", str(backup), "--config", str(config.path)).returncode == 0
        done = run_cli("config", "restore", str(backup), "--config", str(config.path))
        assert done.returncode == 0, done.stderr.decode()
        running = _modes(config.state)
        gw.stop()
        stopped = _modes(config.state)
    finally:
        os.umask(old)
    assert {"store.sqlite", "store.sqlite-wal", "store.sqlite-shm", "gateway.lock", "control.sock",
            "history.sqlite", "web-password", "config.lock"} <= set(running), running
    assert {"store.sqlite", "store.sqlite-wal", "store.sqlite-shm", "control.sock"} <= set(first), first
    for listing in (first, running, stopped):
        for name, mode in listing.items():
            assert mode == ("dir 0o700" if mode.startswith("dir") else mode.split()[0] + " 0o600"), (name, mode, listing)
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.state.stat().st_mode) == 0o700


def test_a_reload_that_moves_state_directory_keeps_the_gateway_found_until_its_restart(config, pty_receiver, hes, gateway, tmp_path) -> None:
    """Field readiness #5: after the file names a new folder, the CLI still finds the gateway where it runs."""
    config.write({"receiver.port": str(pty_receiver.link), "receiving.server.url": hes.url,
                  "receiving.server.push.cron": NEVER})
    gw = gateway(config)
    gw.wait_connected()
    elsewhere = tmp_path / "elsewhere"
    mark = gw.mark()
    config.write({"state.directory": str(elsewhere)})
    gw.send_signal(signal.SIGHUP)
    gw.wait_log("configuration reloaded", after=mark)
    assert gw.find(rf"state\.directory changed to {elsewhere}: takes effect after a restart; running on {config.state}",
                   after=mark)
    telegrams = vector_telegrams(4)
    since = time.time()
    pty_receiver.write(b"".join(CMEX50.encode(t) for t in telegrams))
    gw.wait_ok(len(telegrams))

    status = run_cli("status", "--config", str(config.path))
    assert status.returncode == 0, status.stderr.decode()
    assert json.loads(status.stdout)["telegrams"]["ok"] == len(telegrams)
    pushed = run_cli("push", "now", "--config", str(config.path))
    assert pushed.returncode == 0, pushed.stderr.decode() + gw.tail()
    assert_report(hes.posts[0], pairs(CMEX50, telegrams), since=since)
    changed = run_cli("config", "set", "filter.manufacturer=ELV", "--config", str(config.path))
    assert changed.returncode == 0 and b"the running gateway reloaded the configuration" in changed.stdout, changed.stderr
    assert (config.state / "history.sqlite").exists() and not elsewhere.exists()

    gw.send_signal(signal.SIGTERM)
    assert gw.wait_exit() == 0
    assert not (config.state / "control.sock").exists(), "a clean stop leaves no control socket behind"
    assert not elsewhere.exists()


def test_status_answers_while_the_file_is_broken_after_a_refused_reload(config, pty_receiver, hes, gateway) -> None:
    """Field readiness #5: ``status`` needs the running gateway, not a valid file."""
    config.write({"receiver.port": str(pty_receiver.link), "receiving.server.url": hes.url})
    gw = gateway(config)
    gw.wait_connected()
    mark = gw.mark()
    config.write_raw(config.path.read_text() + "radio.mode=T2\n")
    gw.send_signal(signal.SIGHUP)
    gw.wait_log("keeping the running configuration", after=mark)
    done = run_cli("status", "--config", str(config.path))
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout)["gateway_serial"] == "00000161"


def test_a_file_cut_before_receiving_server_url_is_refused_by_check_run_and_reload(config, pty_receiver, hes, gateway) -> None:
    """Field readiness #5: a file cut at a line boundary still parses; the lost required key is the error."""
    config.write({"receiver.port": str(pty_receiver.link), "receiving.server.url": hes.url})
    whole = config.path.read_text()
    cut = whole[: whole.index("receiving.server.url=")]
    message = ("receiving.server.url: invalid value ''; allowed: a value: the gateway cannot run without this key"
               " unless sync.enabled=true (was the file cut short?)")
    gw = gateway(config)
    gw.wait_connected()
    mark = gw.mark()
    config.write_raw(cut)
    checked = run_cli("config", "check", str(config.path))
    assert checked.returncode == 3 and message in checked.stderr.decode(), checked.stderr
    gw.send_signal(signal.SIGHUP)
    gw.wait_log(re.escape(f"reload refused: {message}"), after=mark)
    gw.wait_log("keeping the running configuration", after=mark)
    telegrams = vector_telegrams(3)
    since = time.time()
    pty_receiver.write(b"".join(CMEX50.encode(t) for t in telegrams))
    assert_report(hes.wait_posts(1, context=gw.tail)[0], pairs(CMEX50, telegrams), since=since)  # still pushing
    gw.send_signal(signal.SIGTERM)
    assert gw.wait_exit() == 0
    started = run_cli("run", "--config", str(config.path))
    assert started.returncode == 3 and message in started.stderr.decode(), started.stderr
