"""`wmbus-stream decode` and `--version` as a user runs them: a real process, real pipes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from wmbus_stream.receivers.cmex50 import encode as cmex50_frame

SPEC_TELEGRAM = (
    "6044961564010061011B7A970400202F2F02653607426534078201652C072265320712653607626516075265560702FB"
    "1A0E0242FB1A0E028201FB1A0E0222FB1A0E0212FB1A0E0262FB1A090252FB1A0F0202FD1B20C30DFD0F05322E302E310F"
)
SPEC_REPORT = "080072640100619615011B000000000C787217006201FD711C0DFD3B61" + SPEC_TELEGRAM


def run(*args: str, data: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wmbus_stream", *args], input=data, capture_output=True,
                          timeout=60, env=os.environ.copy())


def decoded(proc: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in proc.stdout.decode().splitlines()]


def test_version_is_one_line_naming_the_twins():
    proc = run("--version")
    assert proc.returncode == 0
    line = proc.stdout.decode().strip()
    assert "\n" not in line
    expected = "pure" if os.environ.get("WMBUS_STREAM_NO_EXTENSIONS") == "1" else "compiled"
    assert line.startswith("wmbus-stream ") and line.endswith(" " + expected)


def test_spec_vector_through_decode_gives_the_report_telegram():
    proc = run("decode", "--receiver-address", "62001772", data=f"{SPEC_TELEGRAM};-74\n".encode())
    assert proc.returncode == 0, proc.stderr
    [obj] = decoded(proc)
    assert obj["ok"] is True and obj["error"] is None
    assert obj["report_telegram"] == SPEC_REPORT
    assert (obj["manufacturer"], obj["id"], obj["version"], obj["device_type"], obj["ci"], obj["c"]) == (
        "ELV", "61000164", 1, 0x1B, 0x7A, 0x44)
    assert obj["device_type_name"] == "room sensor"
    assert obj["frame_format"] is None and obj["rssi_dbm"] == -74 and obj["mode"] is None
    assert obj["telegram"] == SPEC_TELEGRAM


def test_broken_lines_are_reported_and_decoding_goes_on(vectors):
    good = vectors[1]
    bad_crc = bytearray(good["frame_a_bytes"])
    bad_crc[20] ^= 0x01
    lines = [good["frame_a"], bad_crc.hex(), "not hex at all", good["frame_b"], good["telegram"][:-4]]
    proc = run("decode", data=("\n".join(lines) + "\n").encode())
    assert proc.returncode == 0
    out = decoded(proc)
    assert [o["ok"] for o in out] == [True, False, False, True, False]
    assert out[0]["frame_format"] == "A" and out[3]["frame_format"] == "B"
    assert "CRC error in block 2" in out[1]["error"]
    assert out[2]["error"] and out[4]["error"]
    assert out[1]["report_telegram"] is None and out[1]["telegram"] is None
    assert out[0]["telegram"] == out[3]["telegram"] == good["telegram"]


def test_cmex50_frames_forward_their_own_bytes():
    frame = cmex50_frame(bytes.fromhex(SPEC_TELEGRAM), receiver_address="62001772", rssi_dbm=-74)
    proc = run("decode", "--protocol", "cmex50", data=b"\x00garbage" + frame + frame[:10])
    obj, cut = decoded(proc)
    assert obj["ok"] and obj["report_telegram"] == SPEC_REPORT and obj["rssi_dbm"] == -74
    assert not cut["ok"] and "cut" in cut["error"]  # the frame the capture ends in the middle of


def test_missing_file_exits_1_and_usage_errors_exit_2(tmp_path):
    proc = run("decode", str(tmp_path / "nope.hex"))
    assert proc.returncode == 1 and b"cannot open" in proc.stderr
    assert run("decode", "--receiver-address", "12").returncode == 2
    assert run("decode", "--protocol", "nosuch", data=b"").returncode == 2


@pytest.mark.parametrize("protocol", ["cmex50", "im871a", "amb8465", "rtlwmbus", "hex"])
def test_every_protocol_decodes_empty_input(protocol):
    proc = run("decode", "--protocol", protocol, data=b"")
    assert proc.returncode == 0 and proc.stdout == b""
