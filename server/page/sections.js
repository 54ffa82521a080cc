"use strict";
// A section again: on a finished tune, the page lists its `% [section]`s; "Compose this section
// again" asks the server for a new run (POST v1/runs/{id}/sections), follows its events, and
// shows the new version in place of the tune on screen. The first version stays on the server
// as its own run. Uses page.js's helpers (page, $, element, authHeaders, errorOf, showResult).

function showSections(result) {
  const sections = result.status === "done" ? result.sections || [] : [];
  $("section").replaceChildren(...sections.map((name) => element("option", name,
                                                                 {value: name})));
  $("sections-box").hidden = sections.length === 0;
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
    await followEvents(run);
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
    $("score-box").hidden = true;
    $("follow-box").hidden = true;
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

// The run's server-sent events, until it is done or failed.
async function followEvents(run) {
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
        sectionStatus(`Composing the section again: ${STEP_NAMES[event.node] || event.node} done…`);
      } else if (event.type === "done" || event.type === "failed") {
        await reader.cancel();
        return;
      }
    }
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("section-again").addEventListener("click", composeSectionAgain);
});
