"""The page's "Compose this section again" in a real browser (headless Chromium), against the
real app on loopback with the scripted VLM: every request the page makes stays on loopback
(`visit` checks it)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from playwright.sync_api import Browser, expect

from tests.needs import needs_chromium
from tests.test_compose_cli import PHOTO
from tests.test_graph import REFINED
from tests.test_page import WAIT_MS, browser, compose_with, visit  # noqa: F401 - fixture, shared
from tests.test_sections import NEW_THEME, changed_lines, reworking
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
