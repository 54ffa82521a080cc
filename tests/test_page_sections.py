"""The page's "Compose this section again" and "Continue a tune of your own" in a real
browser (headless Chromium), against the real app on loopback with the scripted VLM: every
request the page makes stays on loopback (`visit` checks it)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from playwright.sync_api import Browser, expect

from tests.needs import needs_chromium
from tests.test_compose_cli import PHOTO
from tests.test_graph import REFINED, TUNE
from tests.test_page import (  # noqa: F401 - the browser fixture, shared
    BLOB_URL,
    WAIT_MS,
    browser,
    compose_with,
    visit,
)
from tests.test_sections import NEW_BARS, NEW_THEME, changed_lines, reworking
from tests.test_server import img2music_server


@needs_chromium
def test_a_section_of_the_tune_on_screen_is_composed_again(browser: Browser,  # noqa: F811
                                                            tmp_path: Path) -> None:
    with img2music_server(tmp_path, responder=reworking) as server, \
            visit(browser, server, tmp_path, viewport={"width": 1280, "height": 900}) as seen:
        page = seen.page
        compose_with(page, PHOTO)
        expect(page.locator("#result-heading")).to_have_text("The tune: Dignity, refined",
                                                             timeout=WAIT_MS)
        expect(page.locator("#status")).to_contain_text("Done in")
        sections = page.get_by_label("Section", exact=True)
        expect(sections.locator("option")).to_have_text(["theme", "close"])
        sections.select_option("theme")
        page.get_by_label("What to change (optional)").fill("brighter")
        page.get_by_role("button", name="Compose this section again").click()
        status = page.locator("#section-status")
        expect(status).to_contain_text("The section “theme” was composed again", timeout=WAIT_MS)
        seen.shot("8-section-again")

        shown = page.locator("#abc").inner_text()
        assert shown != REFINED
        assert changed_lines(REFINED, shown) == ["D2 F2 A2 d2 | c2 B2 A4 | B2 A2 F2 D2 | E8 |"]
        assert NEW_THEME.split("\n")[1] in shown
        # The downloads are the new run's, which names the first as its source.
        href = page.get_by_role("link", name="Report (JSON)").evaluate("a => a.href")
        report = json.loads(httpx.get(href).text)
        assert report["final_abc"] == shown and report["source"]["section"] == "theme"
        assert report["source"]["run"] in status.inner_text()
        asked = [request for request in server.vlm.requests
                 if "Compose the section" in json.dumps(request)]
        assert len(asked) == 1 and "brighter" in json.dumps(asked[0])
        expect(page.get_by_role("button", name="Compose this section again")).to_be_enabled()
        expect(sections.locator("option")).to_have_text(["theme", "close"])  # again, if wanted


@needs_chromium
def test_a_tune_of_ones_own_is_continued_from_the_page(browser: Browser,  # noqa: F811
                                                       tmp_path: Path) -> None:
    tune = tmp_path / "dignity.abc"
    tune.write_text(TUNE, encoding="utf-8")
    with img2music_server(tmp_path, responder=reworking) as server, \
            visit(browser, server, tmp_path) as seen:
        page = seen.page
        page.get_by_text("Continue a tune of your own").click()
        page.get_by_role("button", name="Continue the tune").click()
        expect(page.locator("#continue-error")).to_have_text("Choose an ABC or MIDI file first.")
        page.get_by_label("ABC or MIDI file").set_input_files(str(tune))
        page.get_by_label("Bars to add").fill("4")
        page.get_by_role("button", name="Continue the tune").click()
        expect(page.locator("#status")).to_contain_text("Done", timeout=WAIT_MS)
        expect(page.locator("#result-heading")).to_have_text("The tune: Dignity")
        shown = page.locator("#abc").inner_text()
        assert shown.startswith(TUNE.replace("D8 |]", "D8 |").rstrip("\n"))
        assert shown.rstrip("\n").endswith(NEW_BARS.rstrip("\n"))
        expect(page.locator("#audio")).to_have_attribute("src", BLOB_URL)
        expect(page.get_by_role("link", name="MIDI")).to_be_visible()
        seen.shot("9-continued")
        [asked] = [r for r in server.vlm.requests if "Continue it for 4 more bars" in json.dumps(r)]
        assert TUNE.split("\n")[6] in json.dumps(asked)
