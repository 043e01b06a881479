"""Issue 14's fleet, all real processes: three gateways -> the documented nginx -> two receivers -> one PostgreSQL.

The three ``wmbus-stream run`` gateways (different serials) hear the same telegrams: the
same CMeX50 frames are written to each one's receiver pty. They push over HTTPS, each with
its own credential (``receive --gateways``), to nginx running docs/examples/nginx-hes.conf, which balances the POSTs over two
``wmbus-stream receive --db postgresql://...`` processes sharing one database.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import ssl
from pathlib import Path

import pytest

from gwkit import PROTOCOLS, ConfigFile, PtyReceiver, run_cli, variant, vector_telegrams, wait_for
from hes_harness import Receiver, free_port, start_hes_nginx
from pg_harness import PgCluster

pytestmark = pytest.mark.integration

CMEX50 = PROTOCOLS["cmex50"]
SERIALS = ("00000171", "00000172", "00000173")

def push_password(serial: str) -> str:
    return f"push-s3cret-of-{serial}"


def test_three_gateways_through_nginx_to_two_receivers_store_each_reading_once_and_a_retry_adds_nothing(
        pg_cluster: PgCluster, pg_url: str, tmp_path: Path, gateway) -> None:
    import psycopg

    database = pg_url.rsplit("/", 1)[1]

    def rows(sql: str) -> list[tuple]:
        return pg_cluster.sql(sql, database)

    credentials = tmp_path / "gateways"  # per-gateway credentials: each pushes as its serial
    for serial in SERIALS:
        (tmp_path / f"{serial}.password").write_text(push_password(serial) + "\n")
        added = run_cli("receive", "credentials", "add", serial, "--gateways", str(credentials),
                        "--password-file", str(tmp_path / f"{serial}.password"))
        assert added.returncode == 0, added.stderr
    ports = (free_port(), free_port())
    receivers = [Receiver(port, "--db", pg_url, "--gateways", str(credentials)) for port in ports]
    ptys = [PtyReceiver(tmp_path / f"tty{n}") for n in range(3)]
    try:
        with start_hes_nginx(tmp_path / "nginx", ports) as lb:
            for receiver in receivers:
                receiver.wait_ready()
            gateways = []
            for n, serial in enumerate(SERIALS):
                (tmp_path / f"gw{n}").mkdir()
                config = ConfigFile(tmp_path / f"gw{n}")
                config.write({"gateway.serial": serial, "receiver.port": str(ptys[n].link),
                              "receiving.server.url": lb.url, "receiving.server.ca.file": str(lb.ca_file),
                              "receiving.server.username": serial, "receiving.server.password": push_password(serial),
                              "receiving.server.push.cron": "*/2 * * * * *"})
                gateways.append(gateway(config, wait=False))
            for gw in gateways:
                gw.wait_started(30)
                gw.wait_connected()

            def context() -> str:
                return "".join(gw.tail(15) for gw in gateways) + "".join(r.tail(15) for r in receivers)

            # Every gateway hears the same 120 telegrams.
            telegrams = vector_telegrams(120)
            capture = b"".join(CMEX50.encode(t) for t in telegrams)
            for pty in ptys:
                pty.write(capture)
            for gw in gateways:
                gw.wait_ok(len(telegrams), timeout=20)
            wait_for(lambda: rows("SELECT count(*) FROM heard_by")[0][0] >= 3 * len(telegrams),
                     "every gateway's receptions stored", 30, context=context)
            for gw in gateways:
                gw.wait_status(lambda s: s["meters_pending"] == 0, "nothing pending", 15)

            digests = {hashlib.sha256(t).hexdigest() for t in telegrams}
            assert {d for (d,) in rows("SELECT digest FROM reading")} == digests
            assert rows("SELECT count(*) FROM reading") == [(len(telegrams),)]
            heard = rows("SELECT r.digest, array_agg(h.gateway ORDER BY h.gateway) FROM heard_by h"
                         " JOIN reading r ON r.id = h.reading_id GROUP BY r.digest")
            assert {d: tuple(g) for d, g in heard} == dict.fromkeys(digests, SERIALS)
            posts = [post for receiver in receivers for post in receiver.posts()]
            assert all(receiver.posts() for receiver in receivers), "nginx balanced nothing to one receiver" + context()
            assert sum(post.new_readings for post in posts) == len(telegrams)
            assert sum(post.lines for post in posts) == 3 * len(telegrams)

            # The Authorization header passes nginx: a wrong password is the receivers' 401, nothing stored.
            tls = ssl.create_default_context(cafile=str(lb.ca_file))
            conn = http.client.HTTPSConnection("127.0.0.1", lb.port, timeout=10, context=tls)
            try:
                wrong = base64.b64encode(f"{SERIALS[1]}:{push_password(SERIALS[0])}".encode()).decode()
                conn.request("POST", "/report", body=CMEX50.wired(variant(telegrams[0], 7)).hex().encode(),
                             headers={"Authorization": f"Basic {wrong}", "Content-Type": "text/plain"})
                assert conn.getresponse().status == 401
            finally:
                conn.close()
            assert rows("SELECT count(*) FROM reading") == [(len(telegrams),)]

            # A retried report: its commits wait on a lock until the gateway has given up on the
            # first POST and sent the report again; then both commit, and the second adds nothing.
            fresh = [variant(t, 1) for t in telegrams[:20]]
            blocker = psycopg.connect(pg_cluster.socket_url(database))
            try:
                blocker.execute("LOCK TABLE reading IN EXCLUSIVE MODE")
                ptys[0].write(b"".join(CMEX50.encode(t) for t in fresh))
                wait_for(lambda: rows("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                                      " AND wait_event_type = 'Lock'")[0][0] >= 2,
                         "two POSTs of the same report waiting to commit", 30, context=context)
                gateways[0].wait_log(r"push to .* failed", after=0, timeout=10)
            finally:
                blocker.rollback()
                blocker.close()
            gateways[0].wait_status(lambda s: s["meters_pending"] == 0, "the report acknowledged", 30)
            wait_for(lambda: rows("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                                  " AND wait_event_type = 'Lock'")[0][0] == 0, "every waiting commit done", 30)
            fresh_digests = {hashlib.sha256(t).hexdigest() for t in fresh}
            assert {d for (d,) in rows("SELECT digest FROM reading")} == digests | fresh_digests
            assert rows("SELECT count(*) FROM heard_by") == [(3 * len(telegrams) + len(fresh),)]
            retried = wait_for(lambda: (found := [post for receiver in receivers for post in receiver.posts()
                                                  if post.gateways == (SERIALS[0],) and post.lines == len(fresh)])
                               and len(found) >= 2 and found, "the report and its retry logged", 10, context=context)
            assert sum(post.new_readings for post in retried) == len(fresh)
            assert sorted(post.new_readings for post in retried)[:-1] == [0] * (len(retried) - 1)
    finally:
        for pty in ptys:
            pty.close()
        codes = [receiver.stop() for receiver in receivers]
    assert codes == [0, 0], "".join(receiver.tail() for receiver in receivers)
