"""ConfigManager: validated, atomic, recorded changes; history and revert; export and import;
files applied with the configuration as one transaction; recovery after an interrupted change."""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
from pathlib import Path

import pytest

from wmbus_stream import journal
from wmbus_stream.config import MASK, model
from wmbus_stream.config.manage import ConfigManager, HistoryEntry
from wmbus_stream.errors import ConfigError
from wmbus_stream.state.backup import backup, restore


def tree(*roots: Path) -> dict[str, tuple]:
    """Every entry under the roots (links not followed): type, mode, size, mtime and content hash."""
    out: dict[str, tuple] = {}
    for root in roots:
        for folder, dirs, files in os.walk(root, followlinks=False):
            for name in sorted(dirs + files):
                path = Path(folder) / name
                st = os.lstat(path)
                digest = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else ""
                link = os.readlink(path) if stat.S_ISLNK(st.st_mode) else ""
                key = str(path)
                out[key] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_size,
                            st.st_mtime_ns if not stat.S_ISDIR(st.st_mode) else 0, digest, link)
    return out


@pytest.fixture
def gw(tmp_path: Path) -> tuple[ConfigManager, Path, list]:
    path = tmp_path / "etc" / "stream.cfg"
    path.parent.mkdir()
    state = tmp_path / "state"
    path.write_text(f"# installed by the image\ngateway.serial=00000161\nstate.directory={state}\n"
                    "receiving.server.url=https://hes.example/in\nreceiving.server.password=s3cret\n"
                    "receiver.address=62001772\n")
    applied: list = []
    return ConfigManager(path, state, on_applied=applied.append), path, applied


def test_set_writes_atomically_0600_records_and_announces(gw) -> None:
    manager, path, applied = gw
    entry = manager.set({"filter.manufacturer": "ELV,ABB"})
    assert isinstance(entry, HistoryEntry) and entry.origin == "local" and entry.number == 2
    text = path.read_text()
    assert text.startswith("# installed by the image\n") and "filter.manufacturer=ELV,ABB\n" in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [c.filter_manufacturer for c in applied] == [("ELV", "ABB")]
    history = manager.history()
    assert [(h.number, h.origin) for h in history] == [(2, "local"), (1, "local")]  # the file found first
    assert history[0].text == text and history[1].note == "configuration found on disk"
    assert list(path.parent.iterdir()) == [path]  # no temporary files left


def test_the_history_note_is_the_callers_or_names_the_keys(gw) -> None:
    manager, _, _ = gw
    assert manager.set({"radio.mode": "T1"}, "web", note="moved receiver to the attic").note == \
        "moved receiver to the attic"
    assert manager.set({"radio.mode": "S1", "usb.baud.rate": "9600"}).note == "set radio.mode, usb.baud.rate"


def test_the_same_change_again_writes_and_records_nothing(gw) -> None:
    manager, path, applied = gw
    first = manager.set({"radio.mode": "T1"})
    before = path.stat().st_mtime_ns, path.stat().st_ino
    again = manager.set({"radio.mode": "T1"})
    assert again == first and len(manager.history()) == 2 and len(applied) == 1
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == before
    assert manager.apply(manager.current(), "web") == first


def test_invalid_change_lists_every_problem_and_changes_nothing(gw) -> None:
    manager, path, applied = gw
    manager.set({"radio.mode": "T1"})
    snapshot = tree(path.parent, manager.state_directory)
    with pytest.raises(ConfigError) as info:
        manager.set({"usb.baud.rate": "12", "filter.manufacturer": "E1", "filter.maker": "x"})
    assert {p.key for p in info.value.problems} == {"usb.baud.rate", "filter.manufacturer", "filter.maker"}
    with pytest.raises(ConfigError):
        manager.apply({"sync.enabled": "true"}, "web")  # cross-key rule: needs configuration.server.url
    with pytest.raises(ConfigError):
        manager.set({"filter.manufacturer": "ELV\nreceiving.server.url=http://evil.example/"})
    assert tree(path.parent, manager.state_directory) == snapshot and len(applied) == 1


def test_none_resets_and_the_mask_keeps_a_secret(gw) -> None:
    manager, path, _ = gw
    manager.set({"receiving.server.password": MASK, "receiver.address": None})
    config = manager.current()
    assert config.push_password == "s3cret" and config.receiver_address is None
    assert "receiver.address" not in path.read_text()


def test_history_masks_secrets_and_revert_restores_exact_text(gw) -> None:
    manager, path, _ = gw
    original = path.read_text()
    manager.set({"filter.device.id": "61000164"})
    manager.set({"receiving.server.password": "other"})
    entries = manager.history()
    assert [e.number for e in entries] == [3, 2, 1]
    assert "s3cret" not in entries[2].masked_text and f"receiving.server.password={MASK}" in entries[2].masked_text
    assert "# installed by the image" in entries[2].masked_text
    entry = manager.revert(1)
    assert entry.number == 4 and entry.origin == "revert" and entry.note == "revert to #1"
    assert path.read_text() == original
    assert manager.revert(1) == entry  # already there: nothing new
    with pytest.raises(ConfigError, match="kept entry"):
        manager.revert(99)


def test_export_leaves_out_device_specific_keys_and_secrets(gw) -> None:
    manager, path, _ = gw
    manager.set({"filter.manufacturer": "ELV", "receiving.server.url": "https://gw:pw@hes.example/in"})
    exported = manager.export_text()
    values = model.properties.parse(exported).values
    assert dict(values) == {"filter.manufacturer": "ELV", "receiving.server.url": "https://hes.example/in"}
    for secret in ("s3cret", "pw@", "00000161", "62001772", "state"):
        assert secret not in exported.split("\n", 2)[2]


def test_import_keeps_this_gateways_identity_and_is_all_or_nothing(gw) -> None:
    manager, path, applied = gw
    other = ("filter.device.type=07\nradio.mode=S1\ngateway.serial=99999999\nreceiving.server.password=********\n"
             "state.directory=/elsewhere\nreceiving.server.url=https://hes.example/other\n")
    entry = manager.import_text(other.encode())
    assert entry.origin == "import" and "gateway.serial" in entry.note
    config = manager.current()
    assert config.filter_device_type == (7,) and config.radio_mode == "S1"
    assert config.gateway_serial == "00000161" and config.push_password == "s3cret"
    assert config.receiver_address == "62001772" and config.state_directory == manager.state_directory
    assert config.push_url == "https://hes.example/other"  # an import replaces everything else
    snapshot = tree(path.parent, manager.state_directory)
    for bad in (b"radio.mode=S1\nusb.baud.rate=1\n", b"radio.mode=S1\nradio.mode=T1\n", b"x\xff=1\n",
                b"radio.mode=S1\rfilter.manufacturer=ABC\n", b"nokey\n"):
        with pytest.raises(ConfigError):
            manager.import_text(bad)
    assert tree(path.parent, manager.state_directory) == snapshot and len(applied) == 1


def test_files_are_applied_with_the_configuration_and_only_when_they_differ(gw) -> None:
    manager, path, applied = gw
    text = manager.render(manager.current().with_changes({"radio.mode": "T1"}))
    result = manager.apply_bundle(text, "sync", "Sync-Id 1", files={"ca.pem": b"PEM", "sub/dir/list": b"1"})
    assert result.config_changed and result.files_written == ("ca.pem", "sub/dir/list")
    assert (manager.files_directory / "sub" / "dir" / "list").read_bytes() == b"1"
    assert stat.S_IMODE((manager.files_directory / "ca.pem").stat().st_mode) == 0o600
    snapshot = tree(path.parent, manager.state_directory)
    again = manager.apply_bundle(text, "sync", "Sync-Id 1", files={"ca.pem": b"PEM", "sub/dir/list": b"1"})
    assert not again.changed and again.entry == result.entry
    assert tree(path.parent, manager.state_directory) == snapshot
    only_file = manager.apply_bundle(text, "sync", files={"ca.pem": b"NEW"})
    assert not only_file.config_changed and only_file.files_written == ("ca.pem",)
    assert len(manager.history()) == 2 and len(applied) == 1
    assert not [p for p in manager.files_directory.iterdir() if p.name.startswith(".")]


def test_files_behind_links_are_refused_before_anything_is_written(gw, tmp_path: Path) -> None:
    manager, path, _ = gw
    outside = tmp_path / "outside"
    outside.mkdir()
    manager.files_directory.mkdir(parents=True)
    (manager.files_directory / "link").symlink_to(outside)
    (manager.files_directory / "file-link").symlink_to(outside / "target")
    snapshot = tree(path.parent, manager.state_directory, outside)
    text = manager.render(manager.current().with_changes({"radio.mode": "S1"}))
    for name in ("link/x", "file-link", "../escape", "/abs"):
        with pytest.raises(ConfigError):
            manager.apply_bundle(text, "sync", files={"good": b"1", name: b"evil"})
    assert tree(path.parent, manager.state_directory, outside) == snapshot


class Crash(BaseException):
    """Stands in for a power cut at one step (the integration test uses kill -9)."""


@pytest.mark.parametrize("step", ["staged", "committed", "moved 0", "moved 1", "configuration written",
                                  "history recorded"])
def test_an_interrupted_change_is_all_old_or_completed_at_the_next_start(gw, step: str, monkeypatch) -> None:
    manager, path, _ = gw
    old_text = path.read_text()
    manager.set({"radio.mode": "T1"})
    old_text = path.read_text()

    def hook(name: str) -> None:
        if name == step:
            raise Crash(name)

    monkeypatch.setattr(journal, "step_hook", hook)
    text = manager.render(manager.current().with_changes({"radio.mode": "S1"}))
    with pytest.raises(Crash):
        manager.apply_bundle(text, "sync", files={"a": b"A", "b": b"B"})
    monkeypatch.setattr(journal, "step_hook", None)
    assert path.read_text() in (old_text, text)  # never anything else
    again = ConfigManager(path, manager.state_directory)
    committed = step != "staged"
    assert again.recovered == committed
    assert path.read_text() == (text if committed else old_text)
    files = sorted(p.name for p in manager.files_directory.iterdir()) if manager.files_directory.exists() else []
    assert files == (["a", "b"] if committed else [])
    assert [h.origin for h in again.history()][:1] == (["sync"] if committed else ["local"])
    assert not (manager.state_directory / journal.JOURNAL_NAME).exists()
    assert [p.name for p in path.parent.iterdir()] == ["stream.cfg"]


def test_origin_must_be_known(gw) -> None:
    manager, _, _ = gw
    with pytest.raises(ValueError, match="origin"):
        manager.apply({"radio.mode": "S1"}, "somewhere")


def test_without_a_file_set_starts_from_the_defaults(tmp_path: Path) -> None:
    manager = ConfigManager(tmp_path / "new.cfg", tmp_path / "state")
    entry = manager.set({"gateway.serial": "00000777"})
    assert entry.number == 1 and manager.current().gateway_serial == "00000777"


@pytest.mark.parametrize("how", ["unset", "import", "cut"])
def test_a_change_that_loses_a_required_key_is_refused_and_changes_nothing(gw, how) -> None:
    """Field readiness #5: --unset, an import without it, a file cut short: receiving.server.url stays."""
    manager, path, applied = gw
    before = path.read_bytes()
    with pytest.raises(ConfigError) as info:
        if how == "unset":
            manager.set({"receiving.server.url": None})
        elif how == "import":
            manager.import_text(b"filter.manufacturer=ELV\n")
        else:
            manager.apply_bundle(before.decode()[: before.decode().index("receiving.server.url")], "local")
    assert [p.key for p in info.value.problems] == ["receiving.server.url"]
    assert "cannot run without this key" in str(info.value)
    assert path.read_bytes() == before and applied == []


# -- files a key points at are checked before any change is applied ------------------------


@pytest.fixture
def pems(tmp_path: Path) -> dict[str, Path]:
    """A CA bundle, a web certificate with its key, another key, and files that are none of these."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    folder = tmp_path / "pem"
    folder.mkdir()
    leaf, other = ca.issue_cert("gateway.example"), ca.issue_cert("other.example")
    paths = {name: folder / f"{name}.pem" for name in ("ca", "cert", "key", "other-key", "text", "fake")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    leaf.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    leaf.private_key_pem.write_to_path(str(paths["key"]))
    other.private_key_pem.write_to_path(str(paths["other-key"]))
    paths["text"].write_text("root:x:0:0:root:/root:/bin/bash\n")
    paths["fake"].write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    paths["fifo"] = folder / "fifo"
    os.mkfifo(paths["fifo"])  # reading it would block the gateway
    return paths


@pytest.mark.parametrize("key", ["configuration.server.ca.file", "receiving.server.ca.file"])
@pytest.mark.parametrize("bad, reason", [
    ("text", r"no usable CA certificate in it"), ("fake", r"no usable CA certificate in it"),
    ("fifo", r"not a regular file"), ("missing", r"cannot be read \(No such file or directory\)"),
    ("folder", r"not a regular file"),
])
def test_a_ca_key_is_set_only_to_a_usable_ca_bundle(gw, pems, key: str, bad: str, reason: str) -> None:
    manager, path, applied = gw
    target = {"missing": pems["ca"].with_name("missing.pem"), "folder": pems["ca"].parent}.get(bad) or pems[bad]
    before = path.read_bytes()
    for change in (lambda: manager.set({key: str(target)}), lambda: manager.import_text(f"{key}={target}\n")):
        with pytest.raises(ConfigError) as info:
            change()
        [problem] = info.value.problems
        assert problem.key == key and problem.value == str(target)
        assert re.search(r"an absolute path to a usable PEM file of CA certificates \(" + reason, problem.allowed)
        assert path.read_bytes() == before and applied == []
    manager.set({key: str(pems["ca"])})
    assert manager.current().get(key) == str(pems["ca"])


def test_the_web_certificate_and_key_must_load_together(gw, pems) -> None:
    manager, path, applied = gw
    before = path.read_bytes()
    for cert, key, where, reason in (("cert", "other-key", "web.tls.cert", "do not load together"),
                                     ("ca", "text", "web.tls.cert", "do not load together"),
                                     ("cert", "fifo", "web.tls.key", "not a regular file")):
        with pytest.raises(ConfigError) as info:
            manager.set({"web.tls.cert": str(pems[cert]), "web.tls.key": str(pems[key])})
        assert info.value.problems[0].key == where and reason in info.value.problems[0].allowed
        assert path.read_bytes() == before and applied == []
    manager.set({"web.tls.cert": str(pems["cert"]), "web.tls.key": str(pems["key"])})
    assert len(applied) == 1


def test_a_bundle_is_judged_by_the_files_it_writes(gw, pems) -> None:
    """A sync's download is checked as the file it will be; replacing a file a key points at is
    checked too, while a file that broke later does not block unrelated changes."""
    manager, path, _ = gw
    target = manager.files_directory / "certs" / "ca.pem"
    text = manager.render(manager.current().with_changes({"receiving.server.ca.file": str(target)}))
    with pytest.raises(ConfigError, match="no usable CA certificate"):
        manager.apply_bundle(text, "sync", files={"certs/ca.pem": pems["text"].read_bytes()})
    assert not target.exists()
    manager.apply_bundle(text, "sync", files={"certs/ca.pem": pems["ca"].read_bytes()})
    with pytest.raises(ConfigError, match="no usable CA certificate"):
        manager.apply_bundle(text, "sync", files={"certs/ca.pem": b"junk"})
    assert target.read_bytes() == pems["ca"].read_bytes()
    target.write_bytes(b"broken later")
    manager.set({"radio.mode": "T1"})  # the CA key did not change: not judged again


def test_a_restore_whose_ca_file_is_unusable_here_changes_nothing(gw, pems, tmp_path: Path) -> None:
    manager, path, _ = gw
    manager.set({"receiving.server.ca.file": str(pems["ca"])})
    archive = io.BytesIO()
    backup(manager, archive)
    other_path = tmp_path / "other" / "stream.cfg"
    other_path.parent.mkdir()
    other_path.write_text(f"gateway.serial=00000999\nstate.directory={tmp_path / 'other-state'}\n")
    other = ConfigManager(other_path, tmp_path / "other-state")
    before = other_path.read_bytes()
    pems["ca"].write_text("replaced by something else\n")
    with pytest.raises(ConfigError, match=r"receiving\.server\.ca\.file: .*no usable CA certificate"):
        restore(other, io.BytesIO(archive.getvalue()))
    assert other_path.read_bytes() == before and other.history() == []
