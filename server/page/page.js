"use strict";
// img2music's page: one run at a time through the server's OpenAI-compatible API, streamed.
// Everything the model wrote is untrusted text: it goes in with textContent, never as markup,
// and the run's files are shown from blob URLs in <img> and <audio>, never inlined. When the
// server has abcjs, it draws the tune's score, and the run's own audio moves through it.

const STEPS = ["describe", "retrieve", "compose", "parse_check", "evaluate", "explain"];
const STEP_NAMES = {describe: "Describe", retrieve: "Retrieve", compose: "Compose",
                    parse_check: "Check", evaluate: "Evaluate", explain: "Explain"};
const DOWNLOADS = [["tune.abc", "ABC"], ["tune.mid", "MIDI"], ["tune.musicxml", "MusicXML"],
                   ["tune.wav", "WAV"],
                   ["tune.ogg", "Ogg Vorbis"], ["score.svg", "Score (SVG)"],
                   ["pianoroll.png", "Piano roll"], ["attention.png", "Map (PNG)"],
                   ["motivation.md", "Motivation"], ["report.html", "Report (HTML)"],
                   ["report.json", "Report (JSON)"]];
const SIZES = {length_seconds: "Length (s)", length_beats: "Length (beats)", bars: "Bars",
               voices: "Voices", notes: "Notes"};
const KEY_STORE = "img2music.key";
const QUARTER = 0.25;  // abcjs measures note lengths in whole notes
const INDEX_POLL_MS = 2000;  // how often the page asks how far the server's index build is

const $ = (id) => document.getElementById(id);
// The run in progress (null when none) and the last run, whose results are on screen.
const page = {config: null, file: null, preview: null, run: null, last: null, abcjs: null,
              follow: null, options: null};

function element(tag, text, attributes = {}) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  return node;
}

function oneLine(text) {
  const line = String(text || "").replace(/\s+/g, " ").trim();
  return line.charAt(0).toUpperCase() + line.slice(1);
}

function apiKey() {
  return page.config && page.config.auth ? $("key").value.trim() : "";
}

function authHeaders(extra = {}) {
  const key = apiKey();
  return key ? {...extra, Authorization: `Bearer ${key}`} : extra;
}

function runUrl(run) {
  return `v1/runs/${encodeURIComponent(run.id)}`;
}

function fileUrl(run, name) {
  return `${runUrl(run)}/${encodeURIComponent(name)}`;
}

// ---- the form --------------------------------------------------------------------------------

async function start() {
  try {
    const response = await fetch("page/config.json");
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    page.config = await response.json();
  } catch (error) {
    formError(`This page cannot reach its server (${error.message}); reload to try again.`);
    $("compose").disabled = true;
    return;
  }
  page.abcjs = loadAbcjs();
  const {auth} = page.config;
  $("takes").max = page.config.max_takes;
  $("key-row").hidden = !auth;
  if (auth) $("key").value = sessionStorage.getItem(KEY_STORE) || "";
  $("key").addEventListener("input", () => sessionStorage.setItem(KEY_STORE, $("key").value));
  $("key").addEventListener("change", loadOptions);
  $("advanced").addEventListener("toggle", () => { if ($("advanced").open) loadOptions(); });
  $("image").addEventListener("change", () => chooseFile($("image").files[0]));
  const drop = $("drop");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    chooseFile(event.dataTransfer.files[0]);
  });
  $("form").addEventListener("submit", compose);
  $("cancel").addEventListener("click", () => page.run && stopRun(page.run, "cancelled"));
  $("copy").addEventListener("click", copyAbc);
  $("map-section").addEventListener("change", () => {
    showMap(page.last).catch((error) => log(`The map cannot be shown: ${error.message}`));
  });
  // Enabled only now: a click before the handlers are attached would submit the form as a
  // plain page load and lose the image.
  $("compose").disabled = false;
  watchIndex();
  loadOptions();
}

// ---- the run options of the Advanced panel, as the server declares them ----------------------

// The controls are made from the JSON schema of `/v1/options` (which needs the key, as the
// rest of the API): a title, a description, a type and bounds per option, so every option the
// server offers is here, and a new one appears without a change to this page.
async function loadOptions() {
  if (page.options) return page.options;
  if (page.config.auth && !apiKey()) {
    optionsNote("Enter the API key to see the options.");
    return null;
  }
  try {
    const response = await fetch("v1/options", {headers: authHeaders()});
    if (!response.ok) {
      optionsNote(response.status === 401 ? "Enter the right API key to see the options."
                                          : `The options cannot be loaded (HTTP ${response.status}).`);
      return null;
    }
    if (page.options) return page.options;  // a load that started earlier got there first
    const {schema, defaults} = await response.json();
    page.options = {defaults, controls: Object.entries(schema.properties).map(
      ([name, property]) => optionControl(name, property, defaults[name]))};
    $("options").replaceChildren(...page.options.controls.map((control) => control.row));
    $("options-note").hidden = true;
    return page.options;
  } catch (error) {
    optionsNote(`The options cannot be loaded (${error.message}).`);
    return null;
  }
}

function optionsNote(text) {
  $("options-note").textContent = text;
  $("options-note").hidden = false;
}

function optionControl(name, property, value) {
  const spec = (property.anyOf || [property]).find((choice) => choice.type !== "null") || {};
  const id = `option-${name}`, title = property.title || name;
  const label = element("label", title, {for: id});
  const help = element("span", property.description || "", {id: `${id}-help`, class: "muted help"});
  let input;
  if (spec.type === "boolean") {
    input = element("input", null, {id, type: "checkbox"});
    input.checked = Boolean(value);
  } else if (spec.enum) {
    input = element("select", null, {id});
    input.replaceChildren(...spec.enum.map((choice) => element("option", choice, {value: choice})));
    input.value = value;
  } else if (spec.type === "integer" || spec.type === "number") {
    input = element("input", null, {id, type: "number", step: spec.type === "integer" ? "1" : "any",
                                    inputmode: spec.type === "integer" ? "numeric" : "decimal"});
    if ("minimum" in spec) input.min = spec.minimum;
    if ("maximum" in spec) input.max = spec.maximum;
    input.value = value ?? "";
    if (value === null || value === undefined) input.placeholder = "chosen per run";
  } else {
    input = element("input", null, {id, type: "text"});
    input.value = value ?? "";
  }
  input.setAttribute("aria-describedby", help.id);
  const check = spec.type === "boolean";
  const row = element("p", null, {class: check ? "field check" : "field"});
  row.append(...(check ? [input, label, help] : [label, input, help]));
  return {name, title, spec, input, row};
}

// The value of a control as the option's type; a number outside its bounds is an error message.
function optionValue(control) {
  const {spec, input, title} = control;
  if (spec.type === "boolean") return {value: input.checked};
  if (spec.type !== "integer" && spec.type !== "number") return {value: input.value};
  if (input.value.trim() === "") return {value: null};
  const number = Number(input.value);
  const low = spec.minimum ?? spec.exclusiveMinimum, high = spec.maximum ?? spec.exclusiveMaximum;
  const fits = Number.isFinite(number) && (spec.type !== "integer" || Number.isInteger(number)) &&
    !(number < spec.minimum || number <= spec.exclusiveMinimum ||
      number > spec.maximum || number >= spec.exclusiveMaximum);
  if (fits) return {value: number};
  const kind = spec.type === "integer" ? "a whole number" : "a number";
  const range = low !== undefined && high !== undefined ? ` from ${low} to ${high}`
    : low !== undefined ? ` above ${low}` : high !== undefined ? ` up to ${high}` : "";
  return {error: `${title} must be ${kind}${range}.`};
}

// ---- the music index, while the server builds it (once, as it first starts) ----------------

async function watchIndex() {
  let building = null;
  try {
    const response = await fetch("health");
    building = (await response.json()).index_build || null;
  } catch (error) {
    return;  // the page works without it; a run says what is wrong
  }
  const status = $("index-status");
  if (!building) {
    if (!status.hidden) status.textContent = "The music index is ready.";
    return;
  }
  status.hidden = false;
  if (building.state === "failed") {
    status.textContent = "The music index could not be built as the server started; runs " +
      "will try again.";
    return;
  }
  const progress = building.line ? ` (${building.line})` : "";
  status.textContent = `Building the music index that runs learn from${progress}. This ` +
    "happens once, as the server first starts. You can compose now: retrieval waits for it.";
  setTimeout(watchIndex, INDEX_POLL_MS);
}

function chooseFile(file) {
  if (!file) return;
  hideFormError();
  if (file.type && !file.type.startsWith("image/")) {
    formError(`${file.name} is not an image (${file.type}); choose a photo or a picture.`);
    return;
  }
  page.file = file;
  if (page.preview) URL.revokeObjectURL(page.preview);
  page.preview = URL.createObjectURL(file);
  const preview = $("preview");
  preview.onerror = () => { preview.hidden = true; };
  preview.src = page.preview;
  preview.alt = `The chosen image: ${file.name}`;
  preview.hidden = false;
  $("drop-text").textContent = `${file.name}: drop or choose another to change it`;
}

function formError(message, focus) {
  const box = $("form-error");
  box.textContent = message;
  box.hidden = false;
  if (focus) focus.focus();
}

function hideFormError() {
  $("form-error").hidden = true;
}

// The options this run sets: those whose control differs from the server's default. Without the
// options (no key yet) the run takes the server's settings.
function options() {
  const chosen = {}, all = {...(page.options ? page.options.defaults : {})};
  for (const control of page.options ? page.options.controls : []) {
    const {value, error} = optionValue(control);
    if (error) return {error, input: control.input};
    if (value !== null && value !== page.options.defaults[control.name]) {
      chosen[control.name] = value;
      all[control.name] = value;
    }
  }
  const takes = Number($("takes").value), most = page.config.max_takes;
  if (!Number.isInteger(takes) || takes < 1 || takes > most) {
    return {error: `Takes must be 1 to ${most}.`, input: $("takes")};
  }
  if (takes > 1) chosen.takes = takes;
  return {chosen, all};
}

function readAsDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

// ---- a run -----------------------------------------------------------------------------------

async function compose(event) {
  event.preventDefault();
  if (page.run || !page.config) return;
  hideFormError();
  if (!page.file) return formError("Choose an image first.", $("image"));
  if (page.config.auth && !apiKey()) return formError("Enter the API key first.", $("key"));
  const limit = page.config.max_upload_bytes;
  if (page.file.size > limit) {
    return formError(`${page.file.name} is ${megabytes(page.file.size)}; this server takes ` +
                     `images up to ${megabytes(limit)}.`);
  }
  await loadOptions();
  const {chosen, all, error, input} = options();
  if (error) {
    $("advanced").open = true;
    return formError(error, input);
  }
  const run = beginRun(all);
  let image;
  try {
    image = await readAsDataUrl(page.file);
  } catch (error) {
    return finishRun(run, "failed", `${page.file.name} cannot be read (${error.message})`);
  }
  const note = $("note").value.trim();
  const content = [{type: "image_url", image_url: {url: image}}];
  if (note) content.push({type: "text", text: note});
  const body = {model: "img2music", stream: true, img2music: chosen,
                messages: [{role: "user", content}]};
  try {
    const response = await fetch("v1/chat/completions", {
      method: "POST", body: JSON.stringify(body), signal: run.controller.signal,
      headers: authHeaders({"Content-Type": "application/json"})});
    if (!response.ok) {
      const error = await errorOf(response);
      finishRun(run, "failed", error.message);
      if (response.status === 401) $("key").focus();
      return;
    }
    await readStream(response, run);
    if (!run.finished) finishRun(run, "failed", "the server closed the connection early");
  } catch (error) {
    if (!run.finished) finishRun(run, "failed", `the server cannot be reached (${error.message})`);
  }
}

function megabytes(bytes) {
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

async function errorOf(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return body.error;
  } catch (ignored) { /* not JSON: the status says enough */ }
  return {message: `the server answered ${response.status} ${response.statusText}`};
}

function beginRun(chosen) {
  if (page.last) page.last.blobs.forEach((url) => URL.revokeObjectURL(url));
  stopFollowing();
  const run = {id: null, controller: new AbortController(), timer: null, finished: false,
               options: chosen, attempts: new Map(), blobs: [], maps: new Map(), result: null,
               best: null};
  page.run = run;
  page.last = run;
  armTimer(run);
  for (const id of ["description", "motivation", "abc", "copy-status", "log", "examples",
                    "attempts", "metrics", "downloads", "map-label", "map-section", "faults",
                    "faults-note", "takes-list", "takes-status"]) {
    $(id).replaceChildren();
  }
  for (const id of ["result", "story", "description-box", "examples-box", "attempts-box",
                    "metrics-box", "failure", "map-box", "score-box", "faults-box",
                    "follow-box", "takes-box"]) {
    $(id).hidden = true;
  }
  $("audio").removeAttribute("src");
  for (const step of $("steps").children) {
    step.removeAttribute("data-state");
    step.removeAttribute("aria-current");
    step.textContent = STEP_NAMES[step.dataset.step];
  }
  $("progress").hidden = false;
  $("progress").setAttribute("aria-busy", "true");
  $("compose").disabled = true;
  $("cancel").hidden = false;
  say("Sending the image…");
  return run;
}

function armTimer(run) {
  clearTimeout(run.timer);
  run.timer = setTimeout(() => stopRun(run, "timeout"), page.config.client_timeout_s * 1000);
}

function stopRun(run, why) {
  if (run.finished) return;
  if (run.id) {
    fetch(runUrl(run), {method: "DELETE", headers: authHeaders(), keepalive: true})
      .catch(() => {});  // the aborted stream stops the run on the server as well
  }
  run.controller.abort();
  const message = why === "timeout"
    ? `no answer within ${page.config.client_timeout_s} s, so the run was stopped`
    : "cancelled: the run was stopped";
  finishRun(run, "failed", message);
}

function finishRun(run, outcome, message, status = "Stopped.") {
  if (run.finished) return;
  run.finished = true;
  clearTimeout(run.timer);
  page.run = null;
  $("compose").disabled = false;
  $("cancel").hidden = true;
  $("progress").removeAttribute("aria-busy");
  const active = $("steps").querySelector("[data-state=active]");
  if (outcome === "done") {
    if (active) active.removeAttribute("data-state");
    const seconds = run.result && run.result.wall_seconds;
    say(seconds ? `Done in ${seconds.toFixed(1)} s.` : "Done.");
    return;
  }
  if (active) setStep(active.dataset.step, "failed");
  const failure = $("failure");
  failure.textContent = oneLine(message);
  failure.hidden = false;
  say(status);
}

function say(text) {
  $("status").textContent = text;
}

function log(text) {
  $("log").append(element("li", text));
}

async function readStream(response, run) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done || run.finished) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        await onChunk(JSON.parse(data), run);
        if (run.finished) return;
      }
    }
  }
}

async function onChunk(chunk, run) {
  if (chunk.error) {
    finishRun(run, "failed", chunk.error.message);
    return;
  }
  const event = chunk.img2music;
  if (!event) return;  // the answer text: the result event carries the same, structured
  if (event.type === "queued") {
    run.id = event.run_id;
    say("Queued: waiting for a free place on the server…");
  } else if (event.type === "started") {
    armTimer(run);
    say("Started.");
    setStep("describe", "active");
  } else if (event.type === "node" && event.take) {
    onTakeNode(event.take, event.node, event.update || {});
  } else if (event.type === "node") {
    onNode(event.node, event.update || {}, run);
  } else if (event.type === "result") {
    run.result = event;
    await showResult(event, run);
    if (event.status === "done") {
      finishRun(run, "done");
    } else {
      finishRun(run, "failed", event.failure || "no valid tune within the limits",
                "Finished without a tune.");
    }
  }
}

// ---- progress, node by node ------------------------------------------------------------------

function setStep(step, state) {
  const item = $("steps").querySelector(`[data-step="${step}"]`);
  if (!item) return;
  if (state === "done") {
    const count = Number(item.dataset.count || 0) + 1;
    item.dataset.count = count;
    item.textContent = count > 1 ? `${STEP_NAMES[step]} ×${count}` : STEP_NAMES[step];
  }
  if (state) item.dataset.state = state;
  if (state === "active") {
    for (const other of $("steps").querySelectorAll("[aria-current]")) {
      other.removeAttribute("aria-current");
    }
    item.setAttribute("aria-current", "step");
  } else {
    item.removeAttribute("aria-current");
  }
}

function onNode(node, update, run) {
  setStep(node, "done");
  const attempts = update.attempts || [];
  for (const attempt of attempts) {
    run.attempts.set(attempt.n, attempt);
    showAttempt(attempt);
  }
  const last = attempts[attempts.length - 1];
  let next = null;
  if (node === "describe") {
    showText("description", update.description);
    log("Described the image.");
    next = "retrieve";
  } else if (node === "retrieve") {
    const examples = update.examples || [];
    showExamples(examples);
    log(examples.length ? `Retrieved ${examples.length} real tunes as examples.`
                        : "No examples retrieved (RAG is off or the index is empty).");
    next = "compose";
  } else if (node === "compose" && last) {
    log(`Round ${last.round}: attempt ${last.n + 1} written (${last.kind}).`);
    next = "parse_check";
  } else if (node === "parse_check" && last) {
    const errors = (last.check && last.check.errors) || [];
    const faults = (last.check && last.check.faults) || [];
    const faultCount = faultsOf(last);
    if (!last.valid) {
      log(`Attempt ${last.n + 1} rejected: ${errors.length} error(s)` +
          (errors.length ? `, first: ${errors[0].message}` : "."));
    } else if (faultCount) {
      log(`Attempt ${last.n + 1} plays, with ${faultCount} fault(s) a musician would correct` +
          (faults.length ? `, first: ${faults[0].message}` : "."));
    } else {
      log(`Attempt ${last.n + 1} passed the checker.`);
    }
    if ("best" in update) run.best = update.best;
    // The graph's router (graph/routing.py): repair while the tune has errors or faults,
    // repairs are left in this round and it is not a tune the model already wrote.
    const earlier = [...run.attempts.values()].filter((a) => a.n < last.n);
    const repeated = last.abc && earlier.some((a) => a.abc === last.abc);
    const repairs = earlier.filter((a) => a.round === last.round && a.kind === "repair").length +
                    (last.kind === "repair" ? 1 : 0);
    const standing = run.best !== null ? run.attempts.get(run.best) : null;
    const most = run.options.max_repairs ?? Infinity;  // unknown without the options
    if ((!last.valid || faultCount) && !repeated && repairs < most) {
      next = "compose";
    } else {
      next = standing && !standing.metrics ? "evaluate" : "explain";
    }
  } else if (node === "evaluate" && last) {
    log(`Attempt ${last.n + 1} measured.`);
    const more = run.options.refine && last.round < run.options.refine_rounds;
    next = more ? "compose" : "explain";
  } else if (node === "explain") {
    log(update.status === "done" ? "Chose the best valid tune and explained it."
                                 : `No tune: ${update.failure || "no valid tune"}.`);
    if (update.description) showText("description", update.description);
  }
  if (next) {
    setStep(next, "active");
    say(`${STEP_NAMES[node]} done; now: ${STEP_NAMES[next]}…`);
  } else {
    say(`${STEP_NAMES[node] || node} done; writing the files…`);
  }
  showMetrics(run);
}

// A take's steps: each take has its own attempts, so the page logs them and shows the takes
// side by side once the run is done.
function onTakeNode(take, node, update) {
  const attempts = update.attempts || [];
  const last = attempts[attempts.length - 1];
  let line = `Take ${take}: ${STEP_NAMES[node] || node} done`;
  if (node === "parse_check" && last) {
    line += last.valid ? ` (attempt ${last.n + 1} plays)` : ` (attempt ${last.n + 1} rejected)`;
  }
  log(`${line}.`);
  setStep(node, "done");
  say(`Take ${take}: ${STEP_NAMES[node] || node} done…`);
}

function showText(id, text) {
  if (!text) return;
  $(id).textContent = text;
  $("story").hidden = false;
  $(`${id}-box`).hidden = false;
}

function showExamples(examples) {
  const rows = examples.map((example) => {
    const row = element("tr");
    const title = (example.metadata && example.metadata.title) || example.id;
    row.append(element("td", title), element("td", example.caption),
               element("td", Number(example.score).toFixed(3), {class: "number"}));
    return row;
  });
  $("examples").replaceChildren(...rows);
  $("examples-box").hidden = rows.length === 0;
  if (rows.length) $("story").hidden = false;
}

function faultsOf(attempt) {
  return (attempt.check && attempt.check.fault_count) || 0;
}

function showAttempt(attempt) {
  const id = `attempt-${attempt.n}`;
  let item = document.getElementById(id);
  if (!item) {
    item = element("li", null, {id});
    $("attempts").append(item);
  }
  const checked = attempt.check !== null && attempt.check !== undefined;
  const state = !checked ? "pending" : attempt.valid ? "valid" : "rejected";
  const faultCount = checked ? faultsOf(attempt) : 0;
  item.dataset.state = state;
  const heading = element("h4", `Attempt ${attempt.n + 1} · round ${attempt.round} · ` +
                                `${attempt.kind}${attempt.constrained ? " (under the grammar)" : ""} · `);
  const verdict = state === "valid" && faultCount
    ? `valid, ${faultCount} fault${faultCount > 1 ? "s" : ""} to correct`
    : {pending: "checking…", valid: "valid", rejected: "rejected"}[state];
  heading.append(element("span", verdict, {class: "verdict"}));
  const parts = [heading];
  const said = state === "rejected" ? attempt.check.errors : checked ? attempt.check.faults : [];
  if (state === "rejected" || said.length) {
    const shown = said.length ? said : [{message: "the checker found no tune"}];
    const list = element("ul", null, {"aria-label": "What the checker said"});
    for (const diagnostic of shown.slice(0, 5)) {
      list.append(element("li", whereAndWhat(diagnostic)));
    }
    parts.push(list);
  }
  for (const note of [...(attempt.fixes || []), ...(attempt.notes || [])]) {
    parts.push(element("p", note, {class: "muted"}));
  }
  if (attempt.abc) {
    const details = element("details");
    details.append(element("summary", "ABC"), element("pre", attempt.abc));
    parts.push(details);
  }
  item.replaceChildren(...parts);
  $("attempts-box").hidden = false;
  $("story").hidden = false;
}

function whereAndWhat(diagnostic) {
  const where = diagnostic.line
    ? `line ${diagnostic.line}${diagnostic.col ? `, col ${diagnostic.col}` : ""}: ` : "";
  return where + diagnostic.message;
}

function showMetrics(run) {
  const measured = [...run.attempts.values()].filter((attempt) => attempt.metrics);
  if (!measured.length) return;
  const head = element("tr");
  head.append(element("th", "Metric", {scope: "col"}));
  for (const attempt of measured) {
    head.append(element("th", `Round ${attempt.round} (attempt ${attempt.n + 1})`,
                        {scope: "col"}));
  }
  const rows = Object.keys(measured[0].metrics).map((key) => {
    const row = element("tr");
    const first = measured[0].metrics[key];
    row.append(element("th", SIZES[key] || (first && first.name) || key, {scope: "row"}));
    for (const attempt of measured) {
      row.append(element("td", metricText(attempt.metrics[key]), {class: "number"}));
    }
    return row;
  });
  const thead = element("thead"), tbody = element("tbody");
  thead.append(head);
  tbody.append(...rows);
  $("metrics").replaceChildren(thead, tbody);
  $("metrics-box").hidden = false;
}

function metricText(metric) {
  // A metric is {value, undefined_reason}; the tune's size (bars, notes...) a plain number.
  const value = typeof metric === "object" && metric !== null ? metric.value : metric;
  if (value === null || value === undefined) {
    const reason = metric && metric.undefined_reason;
    return reason ? `undefined (${reason})` : "undefined";
  }
  return String(Number(Number(value).toFixed(3)));
}

// ---- the result ------------------------------------------------------------------------------

async function showResult(result, run) {
  if (result.takes) return showTakes(result, run);
  const files = Object.keys(result.files || {});
  showText("description", result.description);
  showDownloads(run, files, result.attention_maps);
  $("result").hidden = files.length === 0;
  $("tune").hidden = result.status !== "done";
  if (result.status !== "done") {
    $("result-heading").textContent = "No tune this time";
    return;
  }
  const title = /^T:\s*(.+)$/m.exec(result.abc || "");
  $("result-heading").textContent = title ? `The tune: ${title[1].trim()}` : "The tune";
  $("motivation").textContent = result.motivation || "";
  $("abc").textContent = result.abc || "";
  showFaults(result.faults || [], result.fault_count || 0);
  showSections(result);
  const loads = [];
  const audio = files.includes("tune.wav") ? "tune.wav" : files.find((f) => f === "tune.ogg");
  if (audio) loads.push(blobUrl(run, audio).then((url) => { $("audio").src = url; }));
  const following = audio && result.abc && await follow(result.abc, result.metrics);
  if (!following && files.includes("score.svg")) {
    loads.push(blobUrl(run, "score.svg").then((url) => {
      $("score").src = url;
      $("score-box").hidden = false;
    }));
  }
  if (result.attention_maps) loads.push(showMaps(result.attention_maps, run));
  const outcomes = await Promise.allSettled(loads);
  const failed = outcomes.find((outcome) => outcome.status === "rejected");
  if (failed) log(`Some files could not be shown: ${failed.reason.message}`);
}

// ---- several takes, side by side, one to pick -----------------------------------------------

async function showTakes(result, run) {
  showText("description", result.description);
  $("takes-box").hidden = false;
  const loads = [];
  const cards = result.takes.map((take) => {
    const card = element("li", null, {"data-take": take.take});
    const title = /^T:\s*(.+)$/m.exec(take.abc || "");
    card.append(element("h3", `Take ${take.take}${title ? `: ${title[1].trim()}` : ""}`),
                element("p", `Seed ${take.seed}`, {class: "muted"}));
    if (take.status !== "done") {
      card.append(element("p", oneLine(take.failure || "no tune"), {class: "error"}));
      return card;
    }
    const faults = take.fault_count || 0;
    card.append(element("p", faults ? `Plays, ${faults} fault${faults > 1 ? "s" : ""} to correct`
                                    : "Plays, nothing to correct"));
    const names = Object.keys(take.files || {});
    const audioName = names.includes("tune.wav") ? "tune.wav" : names.find((f) => f === "tune.ogg");
    if (audioName) {
      const audio = element("audio", null, {controls: "", preload: "metadata",
                                            "aria-label": `Take ${take.take}, played`});
      card.append(audio);
      loads.push(takeBlob(run, take, audioName).then((url) => { audio.src = url; }));
    }
    if (names.includes("score.svg")) {
      const score = element("img", null, {alt: `The score of take ${take.take}`, class: "score"});
      card.append(score);
      loads.push(takeBlob(run, take, "score.svg").then((url) => { score.src = url; }));
    }
    card.append(element("p", take.motivation || "", {class: "prose"}));
    const abc = element("details");
    abc.append(element("summary", "ABC"), element("pre", take.abc || ""));
    const pick = element("button", "Pick this take", {type: "button", class: "pick"});
    pick.addEventListener("click", () => {
      pickTake(run, take.take).catch((error) => say(`The pick was not recorded: ${error.message}`));
    });
    card.append(abc, pick);
    return card;
  });
  $("takes-list").replaceChildren(...cards);
  showPicked(result.picked);
  const outcomes = await Promise.allSettled(loads);
  const failed = outcomes.find((outcome) => outcome.status === "rejected");
  if (failed) log(`Some files could not be shown: ${failed.reason.message}`);
}

async function takeBlob(run, take, name) {
  const response = await fetch(take.files[name], {headers: authHeaders()});
  if (!response.ok) throw new Error(`${name}: ${(await errorOf(response)).message}`);
  const url = URL.createObjectURL(await response.blob());
  run.blobs.push(url);
  return url;
}

async function pickTake(run, number) {
  const response = await fetch(`${runUrl(run)}/pick`, {
    method: "POST", body: JSON.stringify({take: number}),
    headers: authHeaders({"Content-Type": "application/json"})});
  if (!response.ok) throw new Error((await errorOf(response)).message);
  showPicked((await response.json()).picked);
}

function showPicked(picked) {
  for (const card of $("takes-list").children) {
    const chosen = Number(card.dataset.take) === picked;
    card.toggleAttribute("data-picked", chosen);
    const button = card.querySelector("button.pick");
    if (button) button.textContent = chosen ? "Picked" : "Pick this take";
  }
  $("takes-status").textContent = picked ? `You picked take ${picked}; it is recorded in the ` +
    "run's report." : "Listen to each take and pick the one you keep.";
}

// ---- the score that follows the audio -------------------------------------------------------

function loadAbcjs() {
  if (!page.config.abcjs) return Promise.resolve(false);
  return new Promise((resolve) => {
    const script = element("script", null, {src: "page/abcjs.js"});
    script.onload = () => resolve(typeof ABCJS !== "undefined");
    script.onerror = () => resolve(false);
    document.head.append(script);
  });
}

// Draws the tune with abcjs and lets the audio element drive abcjs's TimingCallbacks: the notes
// light up as they sound, and a click on a note moves the audio there. The audio is abc2midi's,
// so abcjs is given its tempo: quarter notes per minute from the run's measured length (abcjs
// counts beats of the meter, and its own default tempo is not abc2midi's).
async function follow(abc, metrics) {
  if (!(await page.abcjs)) return false;
  const box = $("follow");
  box.replaceChildren();
  let visual;
  try {
    [visual] = ABCJS.renderAbc(box, abc, {add_classes: true, responsive: "resize",
                                          clickListener: (note) => seek(note)});
  } catch (error) {
    log(`The score cannot be drawn here (${error.message}); showing the engraved one.`);
    return false;
  }
  const options = {eventCallback: highlight};
  if (metrics && metrics.length_seconds > 0 && metrics.length_beats > 0) {
    const quarters = 60 * metrics.length_beats / metrics.length_seconds;
    options.qpm = quarters * QUARTER / visual.getBeatLength();
  }
  const timer = new ABCJS.TimingCallbacks(visual, options);
  const audio = $("audio");
  const events = new AbortController();
  const on = (type, handler) => audio.addEventListener(type, handler, {signal: events.signal});
  // Moved to the audio's time, abcjs announces the next note; the one sounding is lit instead.
  const moveTo = (move) => {
    timer.eventCallback = null;
    move();
    timer.eventCallback = highlight;
    highlight(soundingAt(timer, audio.currentTime));
  };
  on("play", () => moveTo(() => timer.start(audio.currentTime, "seconds")));
  on("pause", () => timer.pause());
  on("seeked", () => moveTo(() => timer.setProgress(audio.currentTime, "seconds")));
  on("ended", () => { timer.stop(); highlight(null); });
  page.follow = {timer, events, lit: []};
  $("follow-box").hidden = false;
  return true;
}

function highlight(event) {
  const follow = page.follow;
  if (!follow) return;
  follow.lit.forEach((note) => note.classList.remove("playing"));
  follow.lit = event ? event.elements.flat() : [];
  follow.lit.forEach((note) => note.classList.add("playing"));
  const box = $("follow");
  if (event) {
    box.dataset.bar = event.measureNumber;
    $("follow-bar").textContent = `Bar ${event.measureNumber + 1}`;
  } else {
    delete box.dataset.bar;
    $("follow-bar").textContent = "";
  }
}

function soundingAt(timer, seconds) {
  const events = timer.noteTimings.filter((event) => event.type === "event" &&
                                                    event.milliseconds <= seconds * 1000 + 1);
  return events.length ? events[events.length - 1] : null;
}

function seek(note) {
  const follow = page.follow;
  if (!follow || !note) return;
  const at = follow.timer.noteTimings.find((event) => event.type === "event" &&
    (event.startCharArray || [event.startChar]).includes(note.startChar));
  if (at) $("audio").currentTime = at.milliseconds / 1000;
}

function stopFollowing() {
  if (!page.follow) return;
  page.follow.events.abort();
  page.follow.timer.stop();
  page.follow = null;
}

function showFaults(faults, count) {
  $("faults").replaceChildren(...faults.map((fault) => element("li", fault)));
  $("faults-note").textContent =
    `The tune plays as it is; the checker found ${count} thing${count > 1 ? "s" : ""} to ` +
    `correct${count > faults.length ? " (the first are listed)" : ""}.`;
  $("faults-box").hidden = faults.length === 0;
}

async function blobUrl(run, name) {
  const response = await fetch(fileUrl(run, name), {headers: authHeaders()});
  if (!response.ok) throw new Error(`${name}: ${(await errorOf(response)).message}`);
  const url = URL.createObjectURL(await response.blob());
  run.blobs.push(url);
  return url;
}

async function showMaps(maps, run) {
  const select = $("map-section");
  const choices = [["", maps.file, "Whole tune"],
                   ...maps.sections.map((s) => [s.name, s.file, `Section ${s.name}`])];
  select.replaceChildren(...choices.map(([, file, label]) => element("option", label,
                                                                     {value: file})));
  select.disabled = choices.length < 2;
  run.mapLabel = maps.label + (maps.note ? ` (${maps.note})` : "");
  run.mapChoices = new Map(choices.map(([, file, label]) => [file, label]));
  $("map-label").textContent = run.mapLabel;
  await showMap(run);
  $("map-box").hidden = false;
}

async function showMap(run) {
  if (!run || !run.mapChoices) return;
  const file = $("map-section").value;
  if (!run.maps.has(file)) run.maps.set(file, await blobUrl(run, file));
  const map = $("map");
  map.src = run.maps.get(file);
  map.alt = `${run.mapLabel}: ${run.mapChoices.get(file).toLowerCase()}`;
}

function showDownloads(run, files, maps) {
  const sections = new Map(((maps && maps.sections) || []).map((s) => [s.file, s.name]));
  const known = DOWNLOADS.map(([name]) => name);
  const ordered = [...DOWNLOADS.filter(([name]) => files.includes(name)),
                   ...files.filter((name) => !known.includes(name)).sort().map(
                     (name) => [name, sections.has(name) ? `Map: ${sections.get(name)}` : name])];
  const items = ordered.map(([name, label]) => {
    const link = element("a", label, {href: fileUrl(run, name), download: name,
                                      title: name});
    link.addEventListener("click", (event) => {
      if (!apiKey()) return;  // no key: a plain link works
      event.preventDefault();
      downloadWithKey(run, name).catch((error) => log(`Download failed: ${error.message}`));
    });
    const item = element("li");
    item.append(link);
    return item;
  });
  $("downloads").replaceChildren(...items);
}

async function downloadWithKey(run, name) {
  const url = await blobUrl(run, name);
  const link = element("a", null, {href: url, download: name});
  document.body.append(link);
  link.click();
  link.remove();
}

async function copyAbc() {
  const text = $("abc").textContent;
  try {
    await navigator.clipboard.writeText(text);
    $("copy-status").textContent = "Copied.";
  } catch (error) {
    const range = document.createRange();
    range.selectNodeContents($("abc"));
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    $("copy-status").textContent = "Selected: press Ctrl+C (⌘C) to copy.";
  }
}

document.addEventListener("DOMContentLoaded", start);
