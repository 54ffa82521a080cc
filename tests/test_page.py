"""The web page in a real browser: Debian's chromium, driven headless by Playwright, against the
real app on a loopback port with the scripted VLM behind it.

Every request the page makes is routed through a counter; anything not for 127.0.0.1 is aborted
and fails the test, so the page provably loads nothing from the internet. Screenshots go to the
test's temporary folder (their paths are printed) for a reviewer to look at.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

import img2music.server.page as page_module
from img2music.server.page import ABCJS
from img2music.settings import get_settings
from tests.needs import CHROMIUM, needs_abcjs, needs_chromium
from tests.openai_server import Behaviour, last_user_text
from tests.serving import within
from tests.test_compose_cli import PHOTO
from tests.test_graph import DESCRIPTION, REFINED, answer
from tests.test_retrieval_in_a_run import (  # noqa: F401 - fixtures, shared
    HeldBuild,
    serving_while_building,
    small_batches,
    small_corpus,
    tiny_clip,
    vlm,
)
from tests.test_server import KEY, Served, img2music_server, never_fixes_the_papers_tune

PHONE = {"width": 375, "height": 740}
WAIT_MS = 120_000  # a whole run on two shared CPU cores, CLIP and rendering included
BLOB_URL = re.compile(r"^blob:")  # the page shows the run's media from blob URLs


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield launched
        launched.close()


@dataclass
class Visit:
    page: Page
    shots: Path
    requests: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")  # noqa: T201 - for the reviewer
        return path


@contextmanager
def visit(browser: Browser, server: Served | HeldBuild, tmp_path: Path,
          **options: Any) -> Iterator[Visit]:
    """The page in a fresh browser context; every request counted, none let off loopback."""
    context = browser.new_context(accept_downloads=True, **options)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    seen = Visit(page=page, shots=tmp_path)

    def route(route: Route) -> None:
        url = route.request.url
        seen.requests.append(url)
        # A blob: URL names data the page already holds, under the origin that made it.
        if urlsplit(url.removeprefix("blob:")).hostname == "127.0.0.1":
            route.continue_()
        else:
            seen.outside.append(url)
            route.abort()

    context.route("**/*", route)
    page.on("pageerror", lambda error: seen.errors.append(str(error)))
    page.goto(server.url + "/")
    expect(page.get_by_role("button", name="Compose")).to_be_enabled()  # the page is ready
    try:
        yield seen
    finally:
        context.close()
    assert seen.outside == [], f"requests left loopback: {seen.outside}"
    assert seen.errors == [], f"the page raised: {seen.errors}"
    assert seen.requests and all(url.removeprefix("blob:").startswith(server.url)
                                 for url in seen.requests)


def compose_with(page: Page, image: Path, *, note: str = "", explain: str | None = None,
                 k: int | None = None, seed: int | None = None) -> None:
    page.set_input_files("#image", str(image))
    if note:
        page.get_by_label("Mood or idea (optional)").fill(note)
    if explain is not None or k is not None or seed is not None:
        page.get_by_text("Advanced").click()
        if explain is not None:
            page.get_by_label("Explanation map").select_option(explain)
        if k is not None:
            page.get_by_label("Examples to retrieve (k)").fill(str(k))
        if seed is not None:
            page.get_by_label("Seed").fill(str(seed))
    page.get_by_role("button", name="Compose").click()


def page_bytes(page: Page, url: str) -> bytes:
    """What a URL the page holds (a blob URL too) fetches as, from inside the page."""
    encoded = page.evaluate("""async (url) => {
        const bytes = new Uint8Array(await (await fetch(url)).arrayBuffer());
        let text = "";
        for (const byte of bytes) text += String.fromCharCode(byte);
        return btoa(text);
    }""", url)
    return base64.b64decode(encoded)


def expect_the_score(page: Page) -> None:
    """The score as this server shows it: drawn by abcjs when the server has it (installed by
    scripts/install.sh), else the SVG that abcm2ps engraved."""
    if ABCJS.is_file():
        expect(page.locator("#follow svg .abcjs-note").first).to_be_visible()
        expect(page.locator("#score-box")).to_be_hidden()
    else:
        expect_the_engraved_score(page)


def expect_the_engraved_score(page: Page) -> None:
    score = page.locator("#score")
    expect(score).to_have_attribute("src", BLOB_URL)
    expect(score).to_be_visible()
    assert page_bytes(page, score.get_attribute("src") or "").lstrip().startswith(b"<")
    page.wait_for_function("() => document.getElementById('score').naturalWidth > 0")


def tiny_attention_model(tmp_path: Path) -> Path:
    """A local random-weight VLM, so attention mode gives per-section maps without a GPU."""
    from tests.tiny_vlm import build_tiny_vlm

    model, processor = build_tiny_vlm(eager=True)
    model.save_pretrained(tmp_path / "tiny-vlm")
    processor.save_pretrained(tmp_path / "tiny-vlm")
    return tmp_path / "tiny-vlm"


@needs_chromium
def test_from_a_photo_to_music_watching_every_step(browser: Browser, tmp_path: Path) -> None:
    with img2music_server(tmp_path, attention_model=tiny_attention_model(tmp_path)) as server, \
            visit(browser, server, tmp_path, viewport={"width": 1280, "height": 900}) as seen:
        page = seen.page
        expect(page.locator("#key-row")).to_be_hidden()  # no key set: none asked
        compose_with(page, PHOTO, note="something solemn", explain="attention", k=2, seed=1234)
        expect(page.locator("#preview")).to_have_attribute("alt", "The chosen image: "
                                                          + PHOTO.name)
        expect(page.locator("#result-heading")).to_have_text("The tune: Dignity, refined",
                                                             timeout=WAIT_MS)
        seen.shot("1-result-desktop")

        # Progress: each node of the graph, each round, each attempt and its verdict.
        for step in ("describe", "retrieve", "compose", "parse_check", "evaluate", "explain"):
            expect(page.locator(f'#steps [data-step="{step}"]')).to_have_attribute(
                "data-state", "done")
        expect(page.locator('#steps [data-step="compose"]')).to_have_text("Compose ×2")
        log = page.locator("#log li").all_text_contents()
        assert log == ["Described the image.", "Retrieved 2 real tunes as examples.",
                       "Round 0: attempt 1 written (compose).", "Attempt 1 passed the checker.",
                       "Attempt 1 measured.", "Round 1: attempt 2 written (refine).",
                       "Attempt 2 passed the checker.", "Attempt 2 measured.",
                       "Chose the best valid tune and explained it."]
        expect(page.locator("#attempts > li[data-state=valid]")).to_have_count(2)
        expect(page.locator("#status")).to_contain_text("Done in")
        expect(page.locator("#failure")).to_be_hidden()

        # The story: description, the examples and the metrics of each round.
        expect(page.locator("#description")).to_contain_text("formal portrait of an officer")
        expect(page.locator("#examples tr")).to_have_count(2)
        expect(page.locator("#metrics thead th")).to_have_text(
            ["Metric", "Round 0 (attempt 1)", "Round 1 (attempt 2)"])
        expect(page.locator("#metrics tbody th").first).to_have_text("Pitch range")
        expect(page.locator("#motivation")).to_contain_text("calm dignity")
        expect(page.locator("#abc")).to_have_text(REFINED)

        # The audio element has a playable source: the Ogg (the WAV is not kept unless asked).
        audio = page.locator("#audio")
        expect(audio).to_have_attribute("src", BLOB_URL)  # the media loads after the heading
        assert page_bytes(page, audio.get_attribute("src") or "")[:4] == b"OggS"
        page.wait_for_function("document.getElementById('audio').duration > 0")

        # The score is shown, and the maps as images, per section selectable.
        expect_the_score(page)
        options = page.locator("#map-section option").all_inner_texts()
        assert options == ["Whole tune", "Section theme", "Section close"]
        expect(page.locator("#map")).to_have_attribute("src", BLOB_URL)
        whole = page.locator("#map").get_attribute("src")
        page.wait_for_function("document.getElementById('map').naturalWidth > 0")
        expect(page.locator("#map")).to_have_attribute("alt", "Where the model looked while "
                                                       "composing: attention of the tune's tokens "
                                                       "to the image (mean over layers, heads and "
                                                       "tokens): whole tune")
        page.get_by_label("Map for").select_option(label="Section close")
        expect(page.locator("#map")).to_have_attribute("alt", "Where the model looked while "
                                                       "composing: attention of the tune's tokens "
                                                       "to the image (mean over layers, heads and "
                                                       "tokens): section close")
        assert page.locator("#map").get_attribute("src") != whole
        seen.shot("2-section-map")

        # Every download fetches and is what it says.
        links = page.locator("#downloads a")
        hrefs = {link.get_attribute("download"): link.evaluate("a => a.href")
                 for link in links.all()}
        assert {"tune.abc", "tune.mid", "tune.ogg", "score.svg", "attention.png",
                "attention-1.png", "attention-2.png", "motivation.md", "report.json",
                "report.html"} <= set(hrefs)
        fetched = {name: httpx.get(url).content for name, url in hrefs.items()}
        assert fetched["tune.abc"].decode() == REFINED
        assert fetched["tune.mid"].startswith(b"MThd")
        assert fetched["tune.ogg"][:4] == b"OggS"
        assert fetched["score.svg"].lstrip().startswith((b"<?xml", b"<svg"))
        for name in ("attention.png", "attention-1.png", "attention-2.png"):
            assert fetched[name].startswith(b"\x89PNG")
        report = json.loads(fetched["report.json"])
        assert report["final_abc"] == REFINED
        assert report["settings"]["seed"] == 1234 and report["settings"]["rag_k"] == 2
        assert [s["name"] for s in report["attention_maps"]["sections"]] == ["theme", "close"]
        assert b"<html" in fetched["report.html"]
        with page.expect_download() as download:
            page.get_by_role("link", name="MIDI").click()
        assert Path(download.value.path()).read_bytes().startswith(b"MThd")

        # Copy ABC puts the tune on the clipboard.
        page.get_by_role("button", name="Copy ABC").click()
        expect(page.locator("#copy-status")).to_have_text("Copied.")
        assert page.evaluate("navigator.clipboard.readText()") == REFINED


@needs_chromium
def test_with_a_key_the_page_asks_for_it_and_works_on_a_phone(
    browser: Browser, tmp_path: Path
) -> None:
    with img2music_server(tmp_path, api_key=KEY) as server, \
            visit(browser, server, tmp_path, viewport=PHONE, is_mobile=True,
                  has_touch=True) as seen:
        page = seen.page
        key = page.get_by_label("API key")
        expect(key).to_be_visible()
        assert key.get_attribute("type") == "password"
        # The keyboard reaches the key, then the drop zone's file input, with a visible ring.
        page.keyboard.press("Tab")
        expect(key).to_be_focused()
        page.keyboard.press("Tab")
        expect(page.locator("#image")).to_be_focused()
        assert page.locator("#drop").evaluate("e => getComputedStyle(e).outlineStyle") != "none"
        drop_image(page, PHOTO)
        expect(page.locator("#preview")).to_be_visible()
        page.get_by_role("button", name="Compose").click()
        expect(page.locator("#form-error")).to_have_text("Enter the API key first.")
        expect(key).to_be_focused()

        key.fill("sk-wrong")
        page.get_by_role("button", name="Compose").click()
        expect(page.locator("#failure")).to_contain_text("Missing or wrong API key")
        expect(key).to_be_focused()

        key.fill(KEY)
        page.get_by_role("button", name="Compose").click()
        expect(page.locator("#result-heading")).to_have_text("The tune: Dignity, refined",
                                                             timeout=WAIT_MS)
        # Media fetched with the key, shown from blob URLs.
        expect(page.locator("#audio")).to_have_attribute("src", BLOB_URL)
        assert page_bytes(page, page.locator("#audio").get_attribute("src") or "")[:4] == b"OggS"
        expect_the_score(page)
        with page.expect_download() as download:
            page.get_by_role("link", name="Report (JSON)").click()
        report = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
        assert report["final_abc"] == REFINED
        href = page.get_by_role("link", name="ABC").evaluate("a => a.href")
        assert httpx.get(href).status_code == 401  # the files still need the key
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        seen.shot("3-result-phone-with-key")

        page.reload()
        expect(page.get_by_label("API key")).to_have_value(KEY)  # kept for this tab


@needs_chromium
def test_the_advanced_panel_offers_every_option_the_server_declares(
    browser: Browser, tmp_path: Path
) -> None:
    """Made from `/v1/options`: the seed too, with its bounds and its description."""
    with img2music_server(tmp_path, refine_rounds=2) as server, \
            visit(browser, server, tmp_path) as seen:
        declared = httpx.get(f"{server.url}/v1/options").json()["schema"]["properties"]
        page = seen.page
        page.get_by_text("Advanced").click()
        seed = page.get_by_label("Seed")
        expect(seed).to_be_visible()
        expect(seed).to_have_attribute("type", "number")
        expect(seed).to_have_attribute("min", "0")
        expect(seed).to_have_attribute("max", str(2**31 - 1))
        expect(seed).to_have_value("")  # unset: each run chooses its own
        expect(seed).to_have_accessible_description(re.compile("^Seed of this run's sampling"))
        expect(page.get_by_label("Refinement rounds")).to_have_value("2")  # the server's
        expect(page.get_by_label("Learn from real tunes (RAG)")).to_be_checked()
        expect(page.locator("#options :is(input, select)")).to_have_count(len(declared))
        seed.fill("-3")
        drop_image(page, PHOTO)
        page.get_by_role("button", name="Compose").click()
        expect(page.locator("#form-error")).to_have_text(
            "Seed must be a whole number from 0 to 2147483647.")
        expect(seed).to_be_focused()
        assert server.vlm.requests == []
        seen.shot("4-advanced-options")


def drop_image(page: Page, image: Path) -> None:
    """Drop a file on the drop zone as a person dragging it from their desktop would."""
    page.evaluate("""async ({name, data}) => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, {type: "image/jpeg"}));
        for (const type of ["dragenter", "dragover", "drop"]) {
            document.getElementById("drop").dispatchEvent(
                new DragEvent(type, {dataTransfer: transfer, bubbles: true, cancelable: true}));
        }
    }""", {"name": image.name, "data": base64.b64encode(image.read_bytes()).decode()})


@needs_chromium
def test_failures_are_shown_in_one_line(browser: Browser, tmp_path: Path) -> None:
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("not a picture at all", encoding="utf-8")
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello", encoding="utf-8")
    with img2music_server(tmp_path) as server, visit(browser, server, tmp_path) as seen:
        page = seen.page
        page.set_input_files("#image", str(text_file))
        expect(page.locator("#form-error")).to_have_text(
            "notes.txt is not an image (text/plain); choose a photo or a picture.")
        compose_with(page, not_an_image)
        failure = page.locator("#failure")
        expect(failure).to_contain_text("The image is not usable")
        assert "\n" not in failure.inner_text()
        expect(page.get_by_role("button", name="Compose")).to_be_enabled()
        seen.shot("4-bad-image")
        assert server.vlm.requests == []

    with img2music_server(tmp_path, behaviour=Behaviour(status=503)) as server, \
            visit(browser, server, tmp_path) as seen:
        compose_with(seen.page, PHOTO)
        failure = seen.page.locator("#failure")
        expect(failure).to_contain_text(server.vlm.url, timeout=WAIT_MS)
        expect(seen.page.locator('#steps [data-step="describe"]')).to_have_attribute(
            "data-state", "failed")
        seen.shot("5-endpoint-down")


@needs_chromium
def test_a_tune_that_plays_shows_what_a_musician_would_correct(browser: Browser,
                                                               tmp_path: Path) -> None:
    with img2music_server(tmp_path, responder=never_fixes_the_papers_tune) as server, \
            visit(browser, server, tmp_path) as seen:
        page = seen.page
        compose_with(page, PHOTO)
        expect(page.locator("#result-heading")).to_have_text("The tune: Sunset Over the Coast",
                                                             timeout=WAIT_MS)
        faults = page.locator("#faults-box")
        expect(faults).to_be_visible()
        expect(page.locator("#faults-note")).to_have_text(
            "The tune plays as it is; the checker found 28 things to correct (the first are "
            "listed).")
        expect(page.locator("#faults li")).to_have_count(12)
        expect(page.locator("#faults li").first).to_contain_text(
            "line 8, col 13: bar 2 lasts 3/8 but M:6/4 bars last 12/8")
        expect(page.locator("#attempts > li").first).to_contain_text(
            "valid, 28 faults to correct")
        assert ("Attempt 1 plays, with 28 fault(s) a musician would correct, first: bar 2 lasts "
                "3/8") in " ".join(page.locator("#log li").all_text_contents())
        expect(page.locator("#failure")).to_be_hidden()
        seen.shot("7-faults")


@needs_chromium
def test_a_run_without_a_valid_tune_shows_each_rejection(browser: Browser,
                                                         tmp_path: Path) -> None:
    def no_music(body: dict[str, Any]) -> str:
        return "I would rather describe a painting than write music."

    with img2music_server(tmp_path, responder=no_music, max_repairs=1) as server, \
            visit(browser, server, tmp_path) as seen:
        page = seen.page
        compose_with(page, PHOTO)
        expect(page.locator("#failure")).to_contain_text("No valid tune within the limits",
                                                         timeout=WAIT_MS)
        expect(page.locator("#attempts > li[data-state=rejected]")).to_have_count(2)
        expect(page.locator("#attempts > li").first).to_contain_text("rejected")
        expect(page.locator("#result-heading")).to_have_text("No tune this time")
        expect(page.locator("#tune")).to_be_hidden()
        expect(page.get_by_role("link", name="Report (JSON)")).to_be_visible()
        seen.shot("6-no-tune")


@needs_chromium
def test_a_run_can_be_cancelled_and_one_over_the_limit_stops(browser: Browser,
                                                              tmp_path: Path) -> None:
    """Against a model that takes 30 s to answer, the page's Cancel ends the run within 2 s
    (the test's own wait limit) and the model server sees its request closed."""
    with img2music_server(tmp_path, behaviour=Behaviour(sleep_s=30.0)) as server, \
            visit(browser, server, tmp_path) as seen:
        page = seen.page
        compose_with(page, PHOTO)
        expect(page.locator('#steps [data-step="describe"]')).to_have_attribute(
            "data-state", "active")
        within(60, "the describe call in flight", lambda: server.vlm.in_flight == 1)
        page.get_by_role("button", name="Cancel").click()
        expect(page.locator("#failure")).to_have_text("Cancelled: the run was stopped")
        expect(page.get_by_role("button", name="Compose")).to_be_enabled()
        expect(page.get_by_role("button", name="Cancel")).to_be_hidden()
        seen.shot("7-cancelled")
        (run,) = server.runs.iterdir()
        assert wait_for_end(server, run.name, within_s=2.0)["failure_kind"] == "cancelled"
        within(2.0, "the model server saw its request closed", lambda: server.vlm.hung_up == [1])

    with img2music_server(tmp_path / "slow", behaviour=Behaviour(sleep_s=0.6),
                          server_run_timeout_s=0.5) as server, \
            visit(browser, server, tmp_path) as seen:
        compose_with(seen.page, PHOTO)
        expect(seen.page.locator("#failure")).to_contain_text("the server's run time limit",
                                                              timeout=WAIT_MS)


def wait_for_end(server: Served, run_id: str, within_s: float = WAIT_MS / 1000) -> dict[str, Any]:
    """The run's summary once it has stopped: its event stream ends when the run does."""
    run = f"{server.url}/v1/runs/{run_id}"
    httpx.get(f"{run}/events", timeout=within_s).raise_for_status()
    summary: dict[str, Any] = httpx.get(run).json()
    return summary


@needs_chromium
def test_a_silent_server_does_not_leave_the_page_waiting(
    browser: Browser, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page gives up by itself when nothing comes back in time, and stops the run (the
    page waits 0.5 s here, far less than the server's limit of 60 s and the model's 30 s of
    silence, so however long a loaded machine takes to reach the model, only the page's wait
    can end the run). The page's clock is the test's: it moves past the wait once the run is
    under way, not before."""
    monkeypatch.setattr(page_module, "CLIENT_MARGIN_S", -59.5)
    with img2music_server(tmp_path, behaviour=Behaviour(sleep_s=30.0),
                          server_run_timeout_s=60) as server, \
            visit(browser, server, tmp_path) as seen:
        seen.page.clock.install()
        # The page's time stands still (a second on) until the run is under way.
        seen.page.clock.pause_at(datetime.now() + timedelta(seconds=1))
        compose_with(seen.page, PHOTO)
        # Playwright passes the page's request on to the server only while the test is inside
        # a Playwright call, so the test waits for the run in one, then for the model call.
        expect(seen.page.locator('#steps [data-step="describe"]')).to_have_attribute(
            "data-state", "active")
        within(60, "the describe call in flight", lambda: server.vlm.in_flight == 1)
        seen.page.clock.run_for(1_000)
        expect(seen.page.locator("#failure")).to_have_text(
            "No answer within 0.5 s, so the run was stopped")
        expect(seen.page.get_by_role("button", name="Compose")).to_be_enabled()
        (run,) = server.runs.iterdir()
        assert wait_for_end(server, run.name)["status"] == "failed"
        within(2.0, "the model server saw its request closed", lambda: server.vlm.hung_up == [1])


def test_the_page_and_its_settings_need_no_key_but_the_api_does(tmp_path: Path) -> None:
    with img2music_server(tmp_path, api_key=KEY, rag_k=3) as server:
        index = httpx.get(f"{server.url}/")
        script = httpx.get(f"{server.url}/page/page.js")
        config = httpx.get(f"{server.url}/page/config.json").json()
        missing = httpx.get(f"{server.url}/page/secret.py")
        models = httpx.get(f"{server.url}/v1/models")
        options = httpx.get(f"{server.url}/v1/options")
        keyed = httpx.get(f"{server.url}/v1/options",
                          headers={"Authorization": f"Bearer {KEY}"}).json()
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    policy = index.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert "<script src=\"page/page.js\"" in index.text
    assert script.status_code == 200 and "textContent" in script.text
    assert "innerHTML" not in script.text  # model output never becomes markup
    assert config["auth"] is True
    assert options.status_code == 401 and keyed["defaults"]["rag_k"] == 3
    assert config["client_timeout_s"] > config["run_timeout_s"]
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "file_not_found"
    assert models.status_code == 401


SECONDS_PER_BAR = 4 * 60 / 72  # REFINED: M:4/4 at Q:1/4=72


@needs_chromium
@needs_abcjs
def test_the_score_follows_the_audio_and_a_click_plays_from_a_note(browser: Browser,
                                                                   tmp_path: Path) -> None:
    with img2music_server(tmp_path) as server, visit(browser, server, tmp_path) as seen:
        page = seen.page
        compose_with(page, PHOTO)
        expect(page.locator("#result-heading")).to_have_text("The tune: Dignity, refined",
                                                             timeout=WAIT_MS)
        # abcjs, from this server, draws the tune; the engraved SVG is not needed.
        assert f"{server.url}/page/abcjs.js" in seen.requests
        expect(page.locator("#follow-box")).to_be_visible()
        expect(page.locator("#score-box")).to_be_hidden()
        expect(page.locator("#follow svg .abcjs-note")).to_have_count(24)  # the notes of REFINED
        # A function, not an expression: polling an expression would need eval, which the page's
        # policy forbids.
        page.wait_for_function("() => document.getElementById('audio').duration > 0")

        # Playing from late in bar 1, the highlight moves to bar 2 and then bar 3 as the
        # audio gets there: each change is logged with the audio's time when it happened.
        page.evaluate("""() => {
            window.bars = [];
            const follow = document.getElementById("follow");
            new MutationObserver(() => window.bars.push({
                bar: Number(follow.dataset.bar),
                at: document.getElementById("audio").currentTime,
                lit: [...follow.querySelectorAll(".playing")].map((e) => e.getAttribute("class")),
            })).observe(follow, {attributes: true, subtree: true,
                                 attributeFilter: ["data-bar", "class"]});
        }""")
        page.locator("#audio").evaluate(f"audio => {{ audio.currentTime = "
                                        f"{SECONDS_PER_BAR - 0.5}; return audio.play(); }}")
        page.wait_for_function("() => window.bars.some((change) => change.bar === 2)",
                               timeout=WAIT_MS)
        page.locator("#audio").evaluate("audio => audio.pause()")
        seen.shot("8-score-following")
        bars: list[dict[str, Any]] = page.evaluate("window.bars")
        print(bars)  # noqa: T201 - for the reviewer
        order = [bar["bar"] for bar in bars]
        assert order == sorted(order) and {0, 1, 2} <= set(order), order
        for change in bars:  # the bar lit is the bar the audio is in (within a beat)
            assert change["bar"] * SECONDS_PER_BAR - 1 <= change["at"] \
                <= (change["bar"] + 1) * SECONDS_PER_BAR + 1, change
            assert all(f"abcjs-mm{change['bar']} " in f"{lit} " for lit in change["lit"]), change
        expect(page.locator("#follow-bar")).to_have_text(f"Bar {order[-1] + 1}")

        # A click on the last bar's first note moves the audio there and lights that note (the
        # staff line through the note head takes the click: abcjs finds the nearest note).
        page.locator("#follow svg .abcjs-note.abcjs-mm7").first.click(force=True)
        expect(page.locator("#follow")).to_have_attribute("data-bar", "7")
        at = page.locator("#audio").evaluate("audio => audio.currentTime")
        assert 7 * SECONDS_PER_BAR - 0.1 <= at <= 7 * SECONDS_PER_BAR + 0.1
        expect(page.locator("#follow .playing").first).to_have_class(re.compile(r"abcjs-mm7\b"))
        expect(page.get_by_role("link", name="MusicXML")).to_be_visible()


@needs_chromium
def test_without_abcjs_the_page_shows_the_engraved_score(
    browser: Browser, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(page_module, "ABCJS", tmp_path / "no-vendor" / "abcjs-basic-min.js")
    with img2music_server(tmp_path) as server, visit(browser, server, tmp_path) as seen:
        page = seen.page
        compose_with(page, PHOTO)
        expect(page.locator("#result-heading")).to_have_text("The tune: Dignity, refined",
                                                             timeout=WAIT_MS)
        expect_the_engraved_score(page)
        expect(page.locator("#follow-box")).to_be_hidden()
        assert not any(url.endswith("/page/abcjs.js") for url in seen.requests)
        assert httpx.get(f"{server.url}/page/abcjs.js").status_code == 404
        seen.shot("9-engraved-score")


HOSTILE = REFINED.replace("T:Dignity, refined", 'T:<img src=x onerror="window.pwned=1">').replace(
    "D2 F2 A2 d2", '"<script>window.pwned=2</script>"D2 F2 A2 d2')


@needs_chromium
@needs_abcjs
def test_a_tune_drawn_on_the_page_runs_no_script(browser: Browser, tmp_path: Path) -> None:
    def hostile(body: dict[str, Any]) -> str:
        return DESCRIPTION if "Describe this image" in last_user_text(body) else answer(HOSTILE)

    with img2music_server(tmp_path, responder=hostile) as server, \
            visit(browser, server, tmp_path) as seen:
        page = seen.page
        compose_with(page, PHOTO)
        expect(page.locator("#follow svg .abcjs-note").first).to_be_visible(timeout=WAIT_MS)
        expect(page.locator("#follow")).to_contain_text('<img src=x onerror="window.pwned=1">')
        # As text; its first character, <, places the annotation left of its note.
        expect(page.locator("#follow")).to_contain_text("script>window.pwned=2</script>")
        assert page.evaluate("() => window.pwned") is None
        assert page.locator("#follow script, #follow img, #follow foreignObject").count() == 0


@needs_chromium
def test_the_page_shows_the_index_build_while_the_server_builds_it(
    browser: Browser, tmp_path: Path, tiny_clip: None, small_corpus: Path,  # noqa: F811
    small_batches: None, vlm: Any,  # noqa: F811
) -> None:
    with serving_while_building(get_settings()) as server, \
            visit(browser, server, tmp_path) as seen:
        status = seen.page.locator("#index-status")
        expect(status).to_contain_text("Building the music index that runs learn from (16 of "
                                       "50 tunes, ", timeout=WAIT_MS)
        expect(status).to_contain_text("This happens once, as the server first starts. You can "
                                       "compose now")
        seen.shot("10-index-building")
        server.release()
        expect(status).to_have_text("The music index is ready.", timeout=WAIT_MS)
