"use strict";
// Working on a tune that exists. A section again: on a finished tune, the page lists its
// `% [section]`s; "Compose this section again" asks the server for a new run (POST
// v1/runs/{id}/sections), follows its events, and shows the new version in place of the tune on
// screen; the first version stays on the server as its own run. A continuation: an ABC or MIDI
// file of the user's, continued for some bars (POST v1/continuations), shown as a run. Uses
// page.js's helpers (page, $, element, authHeaders, errorOf, beginRun, showResult, finishRun).

const MAX_BARS_ADDED = 64;

function showSections(result) {
  const sections = result.status === "done" ? result.sections || [] : [];
  $("section").replaceChildren(...sections.map((name) => element("option", name,
                                                                 {value: name})));
  $("sections-box").hidden = sections.length === 0;
  sectionStatus("");
}

function sectionStatus(text, failed = false) {
  const status = $("section-status");
  status.textContent = text;
  status.className = failed ? "error" : "muted";
}

async function composeSectionAgain() {
  const source = page.last;
  if (!source || !source.id) return;
  if (page.run) {
    sectionStatus("The run is still finishing; ask again once it is done.", true);
    return;
  }
  const section = $("section").value;
  const note = $("section-note").value.trim();
  $("section-again").disabled = true;
  $("compose").disabled = true;
  sectionStatus(`Composing the section “${section}” again…`);
  try {
    const response = await fetch(`${runUrl(source)}/sections`, {
      method: "POST", body: JSON.stringify(note ? {section, note} : {section}),
      headers: authHeaders({"Content-Type": "application/json"})});
    if (!response.ok) throw new Error((await errorOf(response)).message);
    const accepted = await response.json();
    const run = {id: accepted.run_id, blobs: [], maps: new Map(), options: source.options,
                 attempts: new Map(), result: null, finished: true};
    await followEvents(run, (node) => {
      sectionStatus(`Composing the section again: ${STEP_NAMES[node] || node} done…`);
    });
    const summary = await fetch(runUrl(run), {headers: authHeaders()});
    if (!summary.ok) throw new Error((await errorOf(summary)).message);
    const result = await summary.json();
    if (result.status !== "done") {
      sectionStatus(`No new version: ${oneLine(result.failure || "no tune")}. The tune ` +
                    "above is unchanged.", true);
      return;
    }
    source.blobs.forEach((url) => URL.revokeObjectURL(url));
    stopFollowing();
    $("audio").removeAttribute("src");
    for (const id of ["score-box", "follow-box", "map-box"]) $(id).hidden = true;
    run.result = result;
    page.last = run;
    await showResult(result, run);
    $("section").value = section;
    sectionStatus(`The section “${section}” was composed again (seed ${result.seed}); the ` +
                  `tune above is the new version, checked whole. The first version stays as ` +
                  `run ${source.id}.`);
  } catch (error) {
    sectionStatus(`The section could not be composed again: ${oneLine(error.message)}`, true);
  } finally {
    $("section-again").disabled = false;
    $("compose").disabled = Boolean(page.run);
  }
}

async function continueTune() {
  if (page.run || !page.config) return;
  const box = $("continue-error");
  box.hidden = true;
  const fail = (message) => { box.textContent = message; box.hidden = false; };
  const file = $("continue-file").files[0];
  const bars = Number($("continue-bars").value);
  if (!file) return fail("Choose an ABC or MIDI file first.");
  if (!Number.isInteger(bars) || bars < 1 || bars > MAX_BARS_ADDED) {
    return fail(`Bars to add must be 1 to ${MAX_BARS_ADDED}.`);
  }
  if (page.config.auth && !apiKey()) return fail("Enter the API key first.");
  const name = file.name.replace(/[^\w .()-]/g, "_").slice(0, 80) || "tune";
  const body = {bars, name};
  try {
    if (/\.midi?$/i.test(file.name)) {
      body.midi = (await readAsDataUrl(file)).split(",")[1];
    } else {
      body.abc = await file.text();
    }
  } catch (error) {
    return fail(`${file.name} cannot be read (${error.message}).`);
  }
  const run = beginRun(page.last ? page.last.options : {});
  say(`Continuing ${file.name} by ${bars} bars…`);
  try {
    const response = await fetch("v1/continuations", {
      method: "POST", body: JSON.stringify(body), signal: run.controller.signal,
      headers: authHeaders({"Content-Type": "application/json"})});
    if (!response.ok) return finishRun(run, "failed", (await errorOf(response)).message);
    run.id = (await response.json()).run_id;
    await followEvents(run, (node) => {
      setStep(node, "done");
      say(`${STEP_NAMES[node] || node} done…`);
    });
    if (run.finished) return;
    const summary = await fetch(runUrl(run), {headers: authHeaders()});
    if (!summary.ok) return finishRun(run, "failed", (await errorOf(summary)).message);
    run.result = await summary.json();
    await showResult(run.result, run);
    if (run.result.status === "done") {
      finishRun(run, "done");
    } else {
      finishRun(run, "failed", run.result.failure || "no tune", "Finished without a tune.");
    }
  } catch (error) {
    if (!run.finished) finishRun(run, "failed", `the server cannot be reached (${error.message})`);
  }
}

// The run's server-sent events until it is done or failed; `onNode` hears of each node.
async function followEvents(run, onNode) {
  const response = await fetch(`${runUrl(run)}/events`, {headers: authHeaders()});
  if (!response.ok) throw new Error((await errorOf(response)).message);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (!line.startsWith("data: ")) continue;
      const event = JSON.parse(line.slice(6));
      if (event.type === "node") {
        onNode(event.node);
      } else if (event.type === "done" || event.type === "failed") {
        await reader.cancel();
        return;
      }
    }
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("section-again").addEventListener("click", composeSectionAgain);
  $("continue").addEventListener("click", continueTune);
});
