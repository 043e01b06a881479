"""The MQTT publisher's pure parts: the broker URL, the topic and the payload; a missing paho-mqtt."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from wmbus_stream.hes.publish import MqttTarget, parse_mqtt_url, payload, topic
from wmbus_stream.hes.store import Heard, Publication, Reading


@pytest.mark.parametrize(("url", "expected"), [
    ("mqtt://broker", MqttTarget(False, "broker", 1883, "wmbus")),
    ("mqtts://broker.example", MqttTarget(True, "broker.example", 8883, "wmbus")),
    ("mqtt://u:p%40ss@10.0.0.1:1884/site/a/", MqttTarget(False, "10.0.0.1", 1884, "site/a", "u", "p@ss")),
    ("mqtts://[::1]:8884", MqttTarget(True, "::1", 8884, "wmbus")),
])
def test_broker_urls(url: str, expected: MqttTarget) -> None:
    assert parse_mqtt_url(url) == expected


@pytest.mark.parametrize(("url", "reason"), [
    ("http://broker", "scheme 'http' is not mqtt or mqtts"),
    ("broker:1883", "is not mqtt or mqtts"),
    ("mqtt://:1883", "names no host"),
    ("mqtt://127.0.0.1:0", "port 0; allowed: 1 to 65535"),
    ("mqtt://hes:hes@pw@127.0.0.1/x", "percent-encode it"),
    ("mqtt://broker:99999", "Port out of range"),
    ("mqtt://broker/a/#", "query or fragment"),
    ("mqtt://broker/a/+/b", "no wildcards"),
    ("mqtt://broker/a//b", "empty levels"),
    ("mqtt://broker/$SYS", "leading $"),
    ("mqtt://broker?x=1", "query or fragment"),
])
def test_bad_broker_urls_say_what_is_wrong(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("$", r"\$")):
        parse_mqtt_url(url)


def test_the_password_is_never_shown() -> None:
    target = parse_mqtt_url("mqtt://hes:topsecret@broker:1884/x")
    assert "topsecret" not in repr(target) and "topsecret" not in target.display
    assert target.display == "mqtt://hes@broker:1884/x"
    with pytest.raises(ValueError) as refused:
        parse_mqtt_url("ftp://hes:topsecret@broker/x")
    assert "topsecret" not in str(refused.value) and "hes:***@broker" in str(refused.value)


def test_topic_and_payload_of_a_publication() -> None:
    reading = Reading(digest="ab" * 32, manufacturer="KAM", meter_id="61000164", version=0x1B, device_type=0x07,
                      ci=0x7A, access_number=None, telegram=bytes.fromhex("1e442d2c"), first_heard="2026-11-24 10:15:02",
                      first_gateway="00000161", stored_at="2026-11-24T10:15:03.000001Z")
    heard = Heard(digest=reading.digest, date="2026-11-24 10:15:02", gateway="00000161", rssi_code=0, receiver=None,
                  age_minutes=2, stored_at=reading.stored_at)
    assert topic("wmbus", reading) == "wmbus/KAM/07/61000164"
    document = json.loads(payload(Publication(7, reading, (heard,))).decode("utf-8"))
    assert document["telegram"] == "1E442D2C" and document["device_type_name"] == "water"
    assert document["access_number"] is None
    assert document["gateways"] == [{"serial": "00000161", "heard_at": "2026-11-24 10:15:02", "rssi_code": 0,
                                     "rssi_dbm": None, "receiver": None, "age_minutes": 2}]


def test_without_paho_the_error_says_how_to_install_it() -> None:
    code = ("import sys; sys.modules['paho'] = None\n"
            "from wmbus_stream.hes.publish import load_paho\n"
            "from wmbus_stream.errors import DependencyMissingError\n"
            "try:\n    load_paho()\nexcept DependencyMissingError as e:\n    print(e)\n")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install 'wmbus-stream[hes]'" in shown and "paho-mqtt" in shown
