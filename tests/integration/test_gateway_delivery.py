"""Delivery side of the running gateway: HES down, HTTP faults, pushes in flight, TLS through nginx.

The rule every test checks: only a 2xx removes pending telegrams, and the report that is
finally acknowledged holds the latest telegram of every meter, byte for byte as computed
from what was written to the receiver pty.
"""

from __future__ import annotations

import time

import pytest

from gwkit import (
    PROTOCOLS,
    SERIAL,
    Cut,
    Hang,
    Respond,
    assert_report,
    basic_auth,
    body_ok,
    cron_at,
    pairs,
    report_key,
    run_cli,
    soon,
    telegram_report_key,
    variant,
    vector_telegrams,
    wait_for,
)

pytestmark = pytest.mark.integration

CMEX50 = PROTOCOLS["cmex50"]
USER_AGENT = "wmbus-stream/0.1.0 (serial 00000161)"


def test_hes_down_for_several_pushes_then_back_gets_the_latest_of_every_meter(config, pty_receiver, hes, gateway) -> None:
    """A.7 #18 scaled down: refused connections for several slots, then one complete report."""
    telegrams = vector_telegrams(60)
    config.write({"receiver.port": str(pty_receiver.link), "receiving.server.url": hes.url})
    since = time.time()
    gw = gateway(config)
    gw.wait_connected()
    pty_receiver.write(CMEX50.encode(telegrams[0]))
    hes.wait_posts(1, context=gw.tail)  # a working push first

    hes.down()
    latest = {}
    sent = 1
    for round_ in range(3):  # new readings of every meter while the HES is away
        batch = [variant(t, round_) for t in telegrams]
        pty_receiver.write(b"".join(CMEX50.encode(t) for t in batch))
        sent += len(batch)
        latest.update({telegram_report_key(t): t for t in batch})
        failed = gw.status()["pushes"]["failed"]
        status = gw.wait_status(lambda s, f=failed, n=sent: s["telegrams"]["ok"] >= n and s["pushes"]["failed"] >= f + 1,
                                "a failed push after the batch", timeout=15)
        # Bounded by the number of meters, not by the time offline.
        assert status["meters_pending"] == len(telegrams)
    assert status["last_push"]["ok"] is False and "refused" in status["last_push"]["error"]

    posts_before = len(hes.posts)
    hes.up()
    posts = hes.wait_posts(posts_before + 1, context=gw.tail)
    gw.wait_status(lambda s: s["meters_pending"] == 0, "nothing pending")
    first_after = posts[posts_before]
    assert_report(first_after, pairs(CMEX50, latest.values()), since=since)
    assert len(hes.posts) == posts_before + 1  # nothing left for another post
    assert gw.alive()


def test_http_faults_keep_everything_until_a_2xx_and_resend_the_complete_report(config, pty_receiver, scripted_hes, gateway) -> None:
    """A.7 #19-#22, #24: 500, 429, a cut upload, a hung HES, 400, then 204; one slot = one attempt."""
    server = scripted_hes(Respond(500), Respond(429), Cut(after=300), Hang(seconds=5), Respond(400), Respond(204),
                          listening=False)
    telegrams = vector_telegrams(50)
    config.write({"receiver.port": str(pty_receiver.link), "receiving.server.url": server.url,
                  "receiving.server.retries": "0", "receiving.server.read.timeout": "1",
                  "receiving.server.username": "gw-161", "receiving.server.password": "pa:ss wörd"})
    since = time.time()
    gw = gateway(config)
    gw.wait_connected()
    pty_receiver.write(b"".join(CMEX50.encode(t) for t in telegrams))
    gw.wait_ok(len(telegrams))
    server.listen()  # the HES comes up, and misbehaves

    requests = server.wait_requests(6, timeout=20, complete=False, context=gw.tail)
    gw.wait_status(lambda s: s["meters_pending"] == 0, "the 204 acknowledged")
    assert [r.answered for r in requests[:6]] == [500, 429, None, None, 400, 204]
    assert requests[3].client_gone  # the gateway gave up on the hung HES (read timeout)

    full = requests[5].body
    assert_report(body_ok(full).splitlines(keepends=True), pairs(CMEX50, telegrams), since=since)
    for r in requests[:6]:
        if isinstance(r.action, Cut):
            assert not r.complete and full.startswith(r.body) and len(r.body) == 300
        else:  # every attempt sends the complete report again, byte for byte
            assert r.complete and r.body == full
        assert r.headers["transfer-encoding"] == "chunked" and "content-length" not in r.headers
        assert r.headers["user-agent"] == USER_AGENT
        assert r.headers["authorization"] == basic_auth("gw-161", "pa:ss wörd")
    assert server.max_active == 1  # never more than one push in flight

    log = "\n".join(gw.log())
    for cause in ("HTTP 500", "HTTP 429", "connection (reset|closed)", "timeout: no response .* within [0-9.]+ s", "HTTP 400"):
        assert gw.find(rf"push .*failed after 1 attempt\(s\): .*{cause}.*; 50 meters kept"), f"no failed push for {cause}"
    assert gw.find(r"attempt 1/1 failed: HTTP 400 .*not retried")
    assert "pa:ss" not in log and "Basic " not in log

    # After the acknowledged push the store holds only newer arrivals, and they go next.
    newer = variant(telegrams[3], 7)
    pty_receiver.write(CMEX50.encode(newer))
    gw.wait_ok(len(telegrams) + 1)
    server.wait_requests(7, complete=False, context=gw.tail)
    gw.wait_status(lambda s: s["meters_pending"] == 0, "the newer telegram acknowledged")
    assert_report(server.requests[6].lines(), pairs(CMEX50, [newer]), since=since)


def test_retry_after_is_honoured_within_the_interval(config, pty_receiver, scripted_hes, gateway) -> None:
    """A.7 #19: 503 with Retry-After: 2 -> the one retry (retries=1) of the same push waits 2 s."""
    server = scripted_hes(Respond(503, {"Retry-After": "2"}), Respond(204))
    telegrams = vector_telegrams(5)
    config.write({"receiver.port": str(pty_receiver.link), "receiving.server.url": server.url,
                  "receiving.server.push.cron": cron_at(soon(3600)), "receiving.server.retries": "1"})
    since = time.time()
    gw = gateway(config)
    gw.wait_connected()
    pty_receiver.write(b"".join(CMEX50.encode(t) for t in telegrams))
    gw.wait_ok(len(telegrams))
    gw.push_by_hand()
    first, second = server.wait_requests(2, timeout=15, context=gw.tail)[:2]
    status = gw.wait_status(lambda s: s["last_push"] is not None and s["meters_pending"] == 0, "the push acknowledged")
    assert second.head_at - first.done_at >= 1.9, "the retry came before Retry-After allowed it"
    assert status["last_push"]["attempts"] == 2 and status["pushes"] == {"ok": 1, "failed": 0}
    assert gw.find(r"retrying in 2\.0 s \(as the server asked \(Retry-After\)\)")
    assert first.body == second.body
    assert_report(second.lines(), pairs(CMEX50, telegrams), since=since)


@pytest.mark.parametrize("outcome", ["acknowledged", "failed"])
def test_telegram_arriving_during_a_push_stays_for_the_next_one(outcome, config, pty_receiver, scripted_hes, gateway) -> None:
    """A.7 #15: a newer telegram for a meter in the push in flight is neither lost nor shadowed."""
    hang = Hang(then=204 if outcome == "acknowledged" else 500)
    server = scripted_hes(hang, Respond(204))
    a_old, b, c = vector_telegrams(3)
    a_new = variant(a_old, 1)
    config.write({"receiver.port": str(pty_receiver.link), "receiving.server.url": server.url,
                  "receiving.server.push.cron": cron_at(soon(3600)), "receiving.server.retries": "0",
                  "receiving.server.read.timeout": "20"})
    since = time.time()
    gw = gateway(config)
    gw.wait_connected()
    pty_receiver.write(CMEX50.encode(a_old) + CMEX50.encode(b))
    gw.wait_ok(2)
    gw.push_by_hand()
    first = server.wait_requests(1, timeout=10, context=gw.tail)[0]
    assert_report(first.lines(), pairs(CMEX50, [a_old, b]), since=since)
    assert gw.status()["push_in_flight"]

    pty_receiver.write(CMEX50.encode(a_new) + CMEX50.encode(c))  # while the HES holds the push
    gw.wait_ok(4)
    hang.release.set()
    status = gw.wait_status(lambda s: s["last_push"] is not None and not s["push_in_flight"], "the first push done")
    if outcome == "acknowledged":
        assert status["last_push"]["ok"] and status["meters_pending"] == 2
        expected_next = [a_new, c]
    else:
        assert not status["last_push"]["ok"] and status["meters_pending"] == 3
        expected_next = [a_new, b, c]

    done = run_cli("push", "now", "--config", str(config.path))
    assert done.returncode == 0, done.stderr.decode() + gw.tail()
    assert b"acknowledged" in done.stdout
    second = server.wait_requests(2, context=gw.tail)[1]
    assert_report(second.lines(), pairs(CMEX50, expected_next), since=since)
    assert gw.status()["meters_pending"] == 0


def test_tls_and_basic_auth_through_nginx(config, pty_receiver, nginx_hes, gateway) -> None:
    """Push over HTTPS (private CA in receiving.server.ca.file) with basic auth, via nginx, to the HES."""
    telegrams = vector_telegrams(30)
    proto = PROTOCOLS["hex"]
    config.write({"receiver.protocol": "hex", "receiver.port": str(pty_receiver.link),
                  "receiving.server.url": nginx_hes.url, "receiving.server.ca.file": str(nginx_hes.ca_file),
                  "receiving.server.username": "gw", "receiving.server.password": "s3cret"})
    since = time.time()
    gw = gateway(config)
    gw.wait_connected()
    pty_receiver.write(b"".join(proto.encode(t) for t in telegrams))
    gw.wait_ok(len(telegrams))
    wait_for(lambda: len(nginx_hes.hes.lines()) >= len(telegrams), "every meter at the HES", 10, context=gw.tail)
    gw.wait_status(lambda s: s["meters_pending"] == 0, "nothing pending")
    assert_report(nginx_hes.hes.lines(), pairs(proto, telegrams), since=since)
    assert nginx_hes.access_log.read_text().count('"POST /report HTTP/1.1" 204') >= 1


def test_tls_with_the_wrong_ca_or_password_keeps_the_data_until_fixed_by_sighup(config, pty_receiver, nginx_hes, tmp_path, gateway) -> None:
    """A.7 #23 and #20: verification failure and 401 are not retried in the slot; a SIGHUP fixes it."""
    import trustme

    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    telegrams = vector_telegrams(10)
    config.write({"receiver.port": str(pty_receiver.link), "receiving.server.url": nginx_hes.url,
                  "receiving.server.ca.file": str(other), "receiving.server.username": "gw",
                  "receiving.server.password": "s3cret"})
    since = time.time()
    gw = gateway(config)
    gw.wait_connected()
    pty_receiver.write(b"".join(CMEX50.encode(t) for t in telegrams))
    gw.wait_ok(len(telegrams))
    status = gw.wait_status(lambda s: s["pushes"]["failed"] >= 2, "failed pushes")
    assert status["last_push"]["error"].startswith("TLS verify failed") and status["last_push"]["attempts"] == 1
    assert status["meters_pending"] == len(telegrams)
    assert nginx_hes.hes.posts == [] and "POST" not in nginx_hes.access_log.read_text()

    mark = gw.mark()
    config.write({"receiving.server.ca.file": str(nginx_hes.ca_file), "receiving.server.password": "wrong"})
    gw.send_signal(1)  # SIGHUP
    gw.wait_log("configuration reloaded", after=mark)
    gw.wait_log(r"failed after 1 attempt\(s\): HTTP 401", after=mark)
    assert gw.status()["meters_pending"] == len(telegrams) and nginx_hes.hes.posts == []

    mark = gw.mark()
    config.write({"receiving.server.password": "s3cret"})
    gw.send_signal(1)
    gw.wait_log("configuration reloaded", after=mark)
    posts = nginx_hes.hes.wait_posts(1, context=gw.tail)
    gw.wait_status(lambda s: s["meters_pending"] == 0, "nothing pending")
    assert_report(posts[0], pairs(CMEX50, telegrams), since=since)
    assert telegram_report_key(telegrams[0]) in {report_key(line) for line in posts[0]}
    assert SERIAL.encode() == posts[0][0].split(b";")[0]


def test_burst_from_800_meters_keeps_exactly_the_latest_of_each(config, pty_receiver, hes, gateway) -> None:
    """A.7 #6, #14, #16 scaled to 8 s: 1,000 telegrams/s from 800 meters plus a replay storm.

    Every telegram is counted, the store holds one row per meter, the report carries each
    meter's last reading, and the analyzer counts every repetition of the replayed frame.
    """
    import csv
    import io

    from gwkit import SPEC_TELEGRAM, with_id

    meters = [with_id(SPEC_TELEGRAM, 30000000 + m) for m in range(800)]
    storm = with_id(SPEC_TELEGRAM, 39999999)
    config.write({"receiver.port": str(pty_receiver.link), "receiving.server.url": hes.url,
                  "receiving.server.push.cron": cron_at(soon(3600))})
    since = time.time()
    gw = gateway(config)
    gw.wait_connected()
    rounds = 10
    start = time.monotonic()
    for round_ in range(rounds):  # 800 telegrams a round, in slices of 100 every 0.1 s
        frames = [CMEX50.encode(variant(t, round_)) for t in meters]
        if round_ == rounds // 2:
            frames[400:400] = [CMEX50.encode(storm)] * 100  # the same frame 100 times in 0.1 s
        for i in range(0, len(frames), 100):
            pty_receiver.write(b"".join(frames[i:i + 100]))
            time.sleep(max(0.0, start + (round_ * 8 + i // 100 + 1) * 0.1 - time.monotonic()))
    sent = rounds * len(meters) + 100
    status = gw.wait_status(lambda s: s["telegrams"].get("read") == sent, f"all {sent} telegrams read", timeout=30)
    assert status["telegrams"]["ok"] == sent and status["receiver"]["bad_frames"] == 0
    assert status["meters_pending"] == len(meters) + 1

    pushed = run_cli("push", "now", "--config", str(config.path))
    assert pushed.returncode == 0, pushed.stderr.decode()
    assert_report(hes.lines(), pairs(CMEX50, [variant(t, rounds - 1) for t in meters] + [storm]), since=since)

    table = run_cli("analyzer", "--config", str(config.path), "--csv")
    counts = {row["id"]: int(row["count"]) for row in csv.DictReader(io.StringIO(table.stdout.decode()))}
    assert counts["39999999"] == 100
    assert {counts[f"{30000000 + m}"] for m in range(800)} == {rounds}
    assert gw.alive()


def test_hostile_status_lines_reach_the_gateway_log_escaped_and_bounded(config, pty_receiver, scripted_hes, gateway) -> None:
    """A HES's status line is peer text: NUL, ESC, CR and 5000 bytes of reason must not reach the
    log raw (they forged lines and drove the terminal through the BadStatusLine message)."""
    hostile = b"\x00\x01\x1b[2J\x1b]0;owned\x07\rforged: push acknowledged " + b"R" * 5000
    server = scripted_hes(Respond(0, raw=b"HTTP/1.1 2" + hostile + b"\r\n\r\n"),
                          Respond(0, raw=b"HTTP/1.1 500 " + hostile + b"\r\nContent-Length: 0\r\n\r\n"),
                          listening=False)
    config.write({"receiver.port": str(pty_receiver.link), "receiving.server.url": server.url,
                  "receiving.server.retries": "0"})
    gw = gateway(config)
    gw.wait_connected()
    telegrams = vector_telegrams(3)
    pty_receiver.write(b"".join(CMEX50.encode(t) for t in telegrams))
    gw.wait_ok(len(telegrams))
    server.listen()
    for _ in range(2):
        gw.push_by_hand().join(120)
    gw.wait_log(r"HTTP 500 \\x00\\x01\\x1b\[2J")
    gw.wait_log(r"not HTTP: BadStatusLine: HTTP/1.1 2\\x00\\x01\\x1b\[2J")
    for line in gw.log():
        assert line.isascii() and line.isprintable() and len(line) < 1200, repr(line[:300])
    assert not gw.find(r"^forged")
