"""The web UI in a real browser (Debian's headless Chromium) against a real running gateway.

One gateway (simulator receiver, pushing every 2 s to the reference HES with basic auth)
serves the whole module; the tests run in order like an installer's session: log in, read
the Overview, change a filter and see the next report use it, submit invalid values and see
the errors with nothing changed, export the analyzer CSV and compare it with the CLI's,
reset it, revert a configuration, export/import, back up and restore. Each page is saved
as a screenshot (see ``web_harness.screenshot_dir``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from web_harness import ADMIN, HES_SECRET, PASSWORD, Browser, WebGateway, browser_fixture, start_gateway, wait_until  # noqa: F401

import gwkit
from wmbus_stream import implementation
from wmbus_stream.wire.header import manufacturer_letters

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebGateway]:
    running = start_gateway(tmp_path_factory.mktemp("web-ui"))
    try:
        yield running
    finally:
        running.close()


@pytest.fixture(scope="module")
def ui(browser: Browser, gw: WebGateway) -> Browser:
    browser.login(gw.base)
    return browser


def facts(b: Browser) -> dict[str, str]:
    """The Overview's ``<dt>: <dd>`` pairs."""
    pairs = b.driver.execute_script(
        "return [...document.querySelectorAll('dl > div')].map(d => [d.querySelector('dt').textContent,"
        " d.querySelector('dd').textContent]);")
    return dict(pairs)


def flash(b: Browser) -> str:
    return " ".join(e.text for e in b.all(".flash"))


def set_field(b: Browser, key: str, value: str) -> None:
    field = b.css(f'[name="{key}"]')
    if field.tag_name == "select":
        from selenium.webdriver.support.ui import Select

        Select(field).select_by_visible_text(value)
    else:
        field.clear()
        field.send_keys(value)


def manufacturers(post: list[bytes]) -> set[str]:
    out = set()
    for line in post:
        key = gwkit.report_key(line)  # ID(4) MAN(2) VER DEV of the wired header
        out.add(manufacturer_letters(key[4] | key[5] << 8))
    return out


def test_login_page_refuses_a_wrong_password_then_logs_in(browser: Browser, gw: WebGateway) -> None:
    browser.driver.delete_all_cookies()
    browser.get(gw.base + "/analyzer")
    assert browser.driver.title.startswith("Log in")
    browser.screenshot("login")
    browser.css("input[name=user]").send_keys(ADMIN)
    browser.css("input[name=password]").send_keys("not-the-password")
    browser.submit_and_wait(browser.css("button[type=submit]"))
    assert "Wrong user name or password" in browser.text()
    browser.css("input[name=password]").send_keys(PASSWORD)
    browser.submit_and_wait(browser.css("button[type=submit]"))
    assert browser.driver.title.startswith("Analyzer"), "login goes on to the page asked for"
    cookie = browser.driver.get_cookie("wmbus_session")
    assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Strict"


def test_overview_shows_the_running_gateway_and_refreshes_itself(ui: Browser, gw: WebGateway) -> None:
    gw.wait_status(lambda s: s["pushes"]["ok"] >= 1, "a first acknowledged push")
    ui.get(gw.base + "/")
    shown = facts(ui)
    assert shown["Enabled"] == "yes"
    assert shown["Implementation"] == implementation()
    assert shown["Gateway serial"] == "00000161"
    assert shown["Protocol"] == "simulator" and shown["State"] == "connected"
    assert int(shown["Read"]) > 0 and "acknowledged" in shown["Result"]
    ui.screenshot("overview")
    before = shown["Read"]
    ui.wait(lambda: facts(ui)["Read"] != before, "the Overview to refresh itself (live.js)", timeout=15)


def test_a_filter_changed_in_settings_is_used_by_the_next_report(ui: Browser, gw: WebGateway) -> None:
    ui.get(gw.base + "/settings")
    set_field(ui, "filter.manufacturer", "KAM")
    set_field(ui, "note", "only Kamstrup")
    ui.submit_and_wait(ui.css("#save"), "the settings page after saving")
    assert re.search(r"Saved as configuration #\d+", flash(ui)), flash(ui)
    assert gw.gateway.config.filter_manufacturer == ("KAM",)
    assert "filter.manufacturer=KAM" in gw.config_path.read_text()
    seen = len(gw.hes.posts)
    # the push in flight (if any) and the one after it may still carry older telegrams
    posts = wait_until(lambda: [p for p in gw.hes.posts[seen + 2:] if p] or None,
                       "a report sent after the filter change", timeout=60)
    for post in posts:
        assert manufacturers(post) == {"KAM"}
    assert gw.gateway.status().telegrams.get("filter.manufacturer", 0) > 0
    ui.get(gw.base + "/")
    shown = {k: int(v) for k, v in facts(ui).items() if k in ("Read", "OK (accepted)", "Broken", "Filtered out")}
    assert shown["Filtered out"] > 0
    assert shown["Read"] == shown["OK (accepted)"] + shown["Broken"] + shown["Filtered out"], shown


def test_invalid_values_show_errors_next_to_their_keys_and_change_nothing(ui: Browser, gw: WebGateway) -> None:
    file_before = gw.config_path.read_bytes()
    history_before = len(gw.web.manager().history())
    ui.get(gw.base + "/settings")
    set_field(ui, "filter.device.type", "XYZ")
    set_field(ui, "report.timezone", "Mars/Olympus_Mons")
    set_field(ui, "filter.device.id", "12345678")  # valid, but the change is all-or-nothing
    ui.submit_and_wait(ui.css("#save"), "the settings page with errors")
    errors = {e.get_attribute("data-key"): e.text for e in ui.all(".field-error")}
    assert set(errors) == {"filter.device.type", "report.timezone"}
    assert "XYZ" in errors["filter.device.type"] and "hex" in errors["filter.device.type"]
    assert "nothing was changed" in flash(ui)
    # the banner at the top names every wrong key with its reason, each linked to its field
    named = {a.text: a.find_element("xpath", "..").text for a in ui.all("[role=alert] li a")}
    assert named == {key: f"{key}: {reason}" for key, reason in errors.items()}, named
    for link in ui.all("[role=alert] li a"):
        row = link.get_attribute("hash")[1:]
        assert ui.driver.execute_script("return document.getElementById(arguments[0]).className", row) == "invalid"
    assert ui.css('[name="filter.device.type"]').get_attribute("value") == "XYZ", "what was typed stays"
    ui.screenshot("settings-invalid")
    assert gw.config_path.read_bytes() == file_before
    assert len(gw.web.manager().history()) == history_before
    assert gw.gateway.config.filter_device_id == ()


def test_a_key_the_gateway_does_not_know_is_named_in_the_banner(ui: Browser, gw: WebGateway) -> None:
    file_before = gw.config_path.read_bytes()
    ui.get(gw.base + "/settings")
    ui.driver.execute_script(  # a form from another version, or edited by hand
        "const extra = document.createElement('input'); extra.name = 'filter.maker'; extra.value = 'ELV';"
        "document.getElementById('settings-form').appendChild(extra);")
    ui.submit_and_wait(ui.css("#save"), "the settings page refusing the form")
    banner = ui.css("[role=alert]").text
    assert "nothing was changed" in banner and "filter.maker: Unknown key" in banner, banner
    assert gw.config_path.read_bytes() == file_before


def test_analyzer_csv_is_the_clis_and_reset_empties_it(ui: Browser, gw: WebGateway) -> None:
    status, _ = gw.api("PATCH", "/api/v1/config", {"changes": {"service.enabled": "false", "filter.manufacturer": None}})
    assert status == 200
    gw.wait_status(lambda s: s["receiver"]["state"] == "stopped", "the receiver to pause")
    rows = len(gw.gateway.analyzer.rows())
    assert rows > 5
    ui.get(gw.base + "/analyzer")
    assert len(ui.all("table.analyzer tbody tr")) == rows
    sort = next(a for a in ui.all("table.analyzer th a") if a.text.startswith("Avg"))
    ui.submit_and_wait(sort, "the analyzer sorted by average RSSI")
    assert "sort=rssi_avg" in ui.driver.current_url
    shown = [float(td.text) for td in ui.all("table.analyzer tbody tr td:nth-child(8)") if td.text != "-"]
    assert shown == sorted(shown), "weakest meters first"
    assert len(ui.all("svg.bar")) >= len(shown) and ui.all("rect.hist")
    ui.screenshot("analyzer")

    csv_file = ui.download(lambda: ui.css('a[href^="/analyzer.csv"]').click(), ".csv")
    cli = gwkit.run_cli("analyzer", "--csv", "--config", str(gw.config_path))
    assert cli.returncode == 0, cli.stderr
    assert csv_file.read_bytes() == cli.stdout
    assert csv_file.read_bytes().count(b"\r\n") == rows + 1

    # the show-only-allow-listed switch: one meter on the allow-list
    one = gw.gateway.analyzer.rows()[0].id
    assert gw.api("PATCH", "/api/v1/config", {"changes": {"filter.device.id": one}})[0] == 200
    ui.get(gw.base + "/analyzer")
    assert [td.text for td in ui.all("table.analyzer tbody tr td:first-child")] == [one]
    ui.css("#only-switch").click()  # off: every meter
    ui.submit_and_wait(ui.css(".switch button"), "the analyzer with every meter")
    assert len(ui.all("table.analyzer tbody tr")) == rows

    ui.submit_and_wait(ui.css("#reset"), "the analyzer after the reset")
    assert "Analyzer reset" in flash(ui)
    assert "No meters heard yet" in ui.text()
    cli = gwkit.run_cli("analyzer", "--csv", "--config", str(gw.config_path))
    assert cli.stdout.count(b"\r\n") == 1, "only the header is left"
    assert gw.api("PATCH", "/api/v1/config", {"changes": {"service.enabled": "true", "filter.device.id": None}})[0] == 200
    gw.wait_status(lambda s: s["receiver"]["state"] == "connected", "the receiver to run again")


def test_a_configuration_is_reverted_from_the_history(ui: Browser, gw: WebGateway) -> None:
    manager = gw.web.manager()
    first = min(manager.history(), key=lambda e: e.number)
    assert "filter.manufacturer" not in first.text
    assert gw.api("PATCH", "/api/v1/config", {"changes": {"filter.manufacturer": "ELV"}})[0] == 200
    ui.get(gw.base + "/settings")
    ui.screenshot("settings")
    ui.submit_and_wait(ui.css(f"#revert-{first.number}"), "the settings after the revert")
    assert f"Reverted to configuration #{first.number}" in flash(ui)
    assert gw.config_path.read_text(encoding="utf-8") == first.text
    assert gw.gateway.config.filter_manufacturer == ()
    assert max(manager.history(), key=lambda e: e.number).origin == "revert"
    ui.get(gw.base + f"/settings/history/{first.number}")
    assert HES_SECRET not in ui.driver.page_source
    ui.screenshot("settings-history-entry")


def test_export_and_import_through_the_browser(ui: Browser, gw: WebGateway, tmp_path: Path) -> None:
    ui.get(gw.base + "/settings")
    exported = ui.download(lambda: ui.css("#export").click(), ".cfg")
    text = exported.read_text(encoding="utf-8")
    assert HES_SECRET not in text and "gateway.serial" not in text and "receiving.server.password" not in text
    broken = tmp_path / "broken.cfg"
    broken.write_text(text + "filter.device.type=7G\n", encoding="utf-8")
    ui.css("#import-file").send_keys(str(broken))
    ui.submit_and_wait(ui.css("#import"), "the settings refusing the import")
    banner = ui.css("[role=alert]").text
    assert "nothing was changed" in banner and "filter.device.type: Invalid value '7G'" in banner, banner
    edited = tmp_path / "edited.cfg"
    edited.write_text(text + "filter.device.type=07,16\n", encoding="utf-8")
    ui.css("#import-file").send_keys(str(edited))
    ui.submit_and_wait(ui.css("#import"), "the settings after the import")
    assert "Imported and applied" in flash(ui)
    assert gw.gateway.config.filter_device_type == (0x07, 0x16)
    assert gw.gateway.config.push_password == HES_SECRET, "device-specific keys stay"


def test_backup_download_and_restore_upload(ui: Browser, gw: WebGateway) -> None:
    ui.get(gw.base + "/settings")
    backup = ui.download(lambda: ui.css("#backup").click(), ".tar.gz")
    assert backup.stat().st_size > 0
    saved = gw.config_path.read_text(encoding="utf-8")
    assert gw.api("PATCH", "/api/v1/config", {"changes": {"filter.manufacturer": "ELV", "filter.device.type": None}})[0] == 200
    ui.get(gw.base + "/settings")
    ui.css("#restore-file").send_keys(str(backup))
    ui.submit_and_wait(ui.css("#restore"), "the settings after the restore")
    restored = max(gw.web.manager().history(), key=lambda e: e.number)
    assert restored.origin == "restore"
    assert f"Backup restored as configuration #{restored.number}." in flash(ui), flash(ui)
    assert gw.config_path.read_text(encoding="utf-8") == saved
    assert gw.gateway.config.filter_manufacturer == () and gw.gateway.config.filter_device_type == (0x07, 0x16)


def test_push_now_and_help(ui: Browser, gw: WebGateway) -> None:
    ui.get(gw.base + "/")
    pushes = gw.gateway.status().pushes.ok
    ui.submit_and_wait(ui.all(".actions button")[0], "the overview after pushing")
    assert "Push" in flash(ui)
    status = gw.gateway.status()
    assert status.pushes.ok + status.pushes.failed >= pushes
    ui.get(gw.base + "/help")
    assert "The report format" in ui.text() and "/api/v1/" in ui.text()
    ui.screenshot("help")


def page_paths(gw: WebGateway) -> list[str]:
    """Every page the web server registers (GET routes answering HTML), parameters filled in."""
    values = {"n": str(max(e.number for e in gw.web.manager().history())), "name": "app.css"}
    paths = []
    for route in gw.web.routes:
        if route.method != "GET":
            continue
        path = re.sub(r"\(\?P<(\w+)>[^)]*\)", lambda m: values[m[1]], route.pattern.pattern.removesuffix(r"\Z"))
        path = path.replace("\\", "")
        status, headers, _ = gw.request("GET", path, auth=(ADMIN, PASSWORD))
        if status == 200 and headers.get("content-type", "").startswith("text/html"):
            paths.append(path)
    return paths


def assert_fits(b: Browser, name: str) -> None:
    """No sideways scrolling: the document is no wider than the window (a screenshot is kept when it is)."""
    wide = b.driver.execute_script(
        "const root = document.documentElement; if (root.scrollWidth <= root.clientWidth) return null;"
        "return [root.scrollWidth, root.clientWidth, [...document.querySelectorAll('body *')]"
        ".filter(e => e.getBoundingClientRect().right > root.clientWidth + 0.5)"
        ".map(e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '')).slice(0, 10)];")
    if wide is not None:
        shot = b.shots / f"too-wide-{name}.png"
        b.driver.save_screenshot(str(shot))
        pytest.fail(f"{name} at {b.driver.current_url} scrolls sideways at 1280 px: {wide[0]} > {wide[1]} px, "
                    f"wider: {wide[2]} (screenshot {shot})")


def test_every_page_fits_a_1280_pixel_window(ui: Browser, gw: WebGateway, tmp_path: Path) -> None:
    paths = page_paths(gw)
    assert {"/", "/settings", "/analyzer", "/help"} <= set(paths), paths
    ui.driver.set_window_size(1280, 800)
    try:
        assert ui.driver.execute_script("return window.innerWidth") == 1280
        for path in paths:
            ui.get(gw.base + path)
            assert_fits(ui, path.strip("/").replace("/", "-") or "overview")
        # the pages that only a result shows: the settings with a long invalid value, an error page
        ui.get(gw.base + "/settings")
        set_field(ui, "receiving.server.url", "ftp://" + "x" * 300)
        ui.submit_and_wait(ui.css("#save"), "the settings page with errors")
        assert ui.all("[role=alert] li")
        assert_fits(ui, "settings-invalid")
        ui.get(gw.base + "/no-such-page")
        assert "Not found" in ui.text()
        assert_fits(ui, "not-found")
        ui.driver.delete_all_cookies()
        ui.get(gw.base + "/login")
        assert_fits(ui, "login")
        locked = start_gateway(tmp_path, password=None, meters=5)  # no password yet: the one page it shows
        try:
            ui.get(locked.base + "/")
            assert "Set a password on the device" in ui.text()
            assert_fits(ui, "no-password")
        finally:
            locked.close()
    finally:
        ui.driver.set_window_size(1400, 1000)
        ui.login(gw.base)
