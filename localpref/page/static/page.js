"use strict";
// The steering page. Everything a model or a person wrote goes into the page as text
// (Node.append(string) / textContent), never as HTML. The steering logic is all on the server
// (localpref/page/session.py): this file shows the server's state and sends back the character
// offsets the server gave for each word, and what the person typed.

const $ = (id) => document.getElementById(id);

// An element whose children are nodes or strings; strings become text nodes.
function el(tag, className, ...children) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  node.append(...children);
  return node;
}

const count = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

// Make whitespace inside trained tokens visible, as `localpref data inspect` does.
const visible = (text) => text.replace(/\n/g, "⏎\n").replace(/\t/g, "⇥");

let info = null; // GET /api/info
let current = null; // the server's state of this tab's trajectory; null when none is open
let generating = false;
let picked = null; // character offset of the chosen correction point, or null
let comparing = null; // AbortController of a compare stream

function say(message, isError = false) {
  $("status").textContent = message;
  $("status").className = isError ? "error" : "";
}

async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  const response = await fetch(path, init);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.detail || `${response.status} ${response.statusText}`);
  return data;
}

// POST and call onMessage for each line of the NDJSON answer as it arrives.
async function stream(path, body, onMessage, signal) {
  const response = await fetch(path, {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body), signal});
  if (!response.ok) {
    const data = await response.json().catch(() => ({}));
    throw new Error(data.detail || `${response.status} ${response.statusText}`);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let cut;
    while ((cut = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 1);
      if (line.trim()) onMessage(JSON.parse(line));
    }
  }
}

function promptAndSettings() {
  const system = $("system").value, user = $("user").value;
  const prompt = info.chat ? [] : user;
  if (info.chat) {
    if (system.trim()) prompt.push({role: "system", content: system});
    prompt.push({role: "user", content: user});
  }
  const number = (id) => Number($(id).value);
  return {prompt, temperature: number("temperature"), top_p: number("top_p"), seed: number("seed"),
          max_new_tokens: number("max_new_tokens")};
}

// ---------------------------------------------------------------------------------------------
// Steer

function renderAnswer() {
  const box = $("answer");
  box.replaceChildren();
  if (!current) return;
  for (const step of current.steps) {
    box.append(step.accepted || "");
    if ("corrected" in step) {
      box.append(el("del", "rejected", step.rejected + (step.rejected_ends_turn ? " ⏎" : "")),
                 el("ins", "corrected", step.corrected + (step.corrected_ends_turn ? " ⏎" : "")));
    }
  }
  for (const target of current.live) {
    const word = el("span", target.end ? "word end" : "word", target.end ? "⏎ (end of answer)" : target.text);
    word.dataset.at = String(target.at);
    if (picked !== null && target.at >= picked) word.classList.add("struck");
    box.append(word);
  }
}

function renderFacts() {
  if (!current) {
    $("facts").textContent = "";
    return;
  }
  const s = current.sampling;
  $("facts").textContent = `${current.status} · temperature ${s.temperature} · top-p ${s.top_p} · seed ${s.seed}` +
    ` · ${count(current.new_tokens, "token")} sampled · ${count(current.steers, "correction")}` +
    ` · ${count(current.chars_typed, "character")} typed`;
}

function updateButtons() {
  const status = current ? current.status : null;
  $("generate").disabled = current !== null || generating;
  $("stop").disabled = !generating;
  $("continue").disabled = generating || !(status === "stopped" || status === "exhausted");
  $("accept").disabled = current === null;
  $("discard").disabled = current === null;
  for (const id of ["system", "user", "temperature", "top_p", "seed", "max_new_tokens"]) {
    $(id).disabled = current !== null;
  }
  $("answer").classList.toggle("clickable", !generating && current !== null && status !== "closed");
}

function refresh() {
  renderAnswer();
  renderFacts();
  updateButtons();
}

async function run() {
  generating = true;
  picked = null;
  $("correction").hidden = true;
  refresh();
  const tail = el("span", "streaming");
  $("answer").append(tail);
  try {
    await stream(`/api/sessions/${current.id}/generate`, {}, (message) => {
      if (message.piece !== undefined) tail.append(message.piece);
      else if (message.state) current = message.state;
      else if (message.error) say(message.error, true);
    });
  } catch (error) {
    say(error.message, true);
  }
  generating = false;
  refresh();
}

async function generate() {
  try {
    current = await api("/api/sessions", promptAndSettings());
  } catch (error) {
    say(error.message, true);
    return;
  }
  say("");
  await run();
}

async function stop() {
  try {
    current = await api(`/api/sessions/${current.id}/stop`, {});
    say("stopped: click the word where the text goes wrong");
  } catch (error) {
    say(error.message, true);
  }
  refresh();
}

function pick(word) {
  picked = Number(word.dataset.at);
  $("correct-from").textContent = word.classList.contains("end") ? "the end of the answer" : word.textContent;
  $("correction").hidden = false;
  renderAnswer();
  $("correction-text").focus();
}

async function resume() {
  const endsTurn = $("ends-turn").checked;
  try {
    current = await api(`/api/sessions/${current.id}/correct`,
                        {at: picked, text: $("correction-text").value, ends_turn: endsTurn});
  } catch (error) {
    say(error.message, true);
    return;
  }
  say("");
  picked = null;
  $("correction").hidden = true;
  $("correction-text").value = "";
  $("ends-turn").checked = false;
  refresh();
  if (!endsTurn) await run();
}

async function finish(action) {
  try {
    const result = await api(`/api/sessions/${current.id}/${action}`, {});
    say(action === "accept" ? `saved ${result.id} to ${result.saved} (${count(result.steers, "correction")})`
                            : "discarded");
  } catch (error) {
    say(error.message, true);
    return;
  }
  current = null;
  picked = null;
  $("correction").hidden = true;
  $("seed").value = String(Number($("seed").value) + 1); // the next trajectory samples anew
  refresh();
}

// ---------------------------------------------------------------------------------------------
// Review

function promptView(prompt) {
  const box = el("div", "prompt");
  if (typeof prompt === "string") box.append(el("div", "message", prompt));
  else for (const m of prompt) box.append(el("div", `message ${m.role}`, el("b", "", `${m.role}: `), m.content));
  return box;
}

function sideView(steer, side) {
  const line = el("div", `side ${side}`, el("span", "label", side === "chosen" ? "corrected" : "rejected"));
  let k = 0;
  for (const [text, kind] of steer[`${side}_pieces`]) {
    line.append(kind === "span" ? el("span", `tok span ${side} shade${k++ % 2}`, visible(text))
                                : el("span", `tok ${kind}`, text));
  }
  return [line, el("div", `listing ${side}`, `${side} span: ${steer[`${side}_span`]}`)];
}

function steerView(steer) {
  const box = el("div", "steer", el("div", "steer-id", `step ${steer.step}`));
  if (steer.error) box.append(el("p", "error", `not trainable (${steer.reason}): ${steer.error}`));
  else box.append(...sideView(steer, "chosen"), ...sideView(steer, "rejected"));
  return box;
}

function recordView(entry) {
  const remove = el("button", "delete", "Delete");
  remove.type = "button";
  remove.addEventListener("click", async () => {
    if (!window.confirm(`Delete line ${entry.line} from the steer file?`)) return;
    try {
      await api("/api/review/delete", {line: entry.line, digest: entry.digest});
      say(`deleted line ${entry.line}`);
    } catch (error) {
      say(error.message, true);
    }
    loadReview();
  });
  const meta = entry.meta || {};
  const head = el("header", "", `line ${entry.line}`, entry.id ? ` · ${entry.id}` : "",
                  meta.saved ? ` · ${meta.saved}` : "", meta.model ? ` · ${meta.model}` : "", remove);
  const box = el("article", "record", head);
  if (entry.error) {
    box.append(el("p", "error", entry.error));
    return box;
  }
  box.append(promptView(entry.prompt));
  if (!entry.steers.length) box.append(el("p", "muted", "accepted without corrections: ", entry.final || ""));
  for (const steer of entry.steers) box.append(steerView(steer));
  return box;
}

async function loadReview() {
  let data;
  try {
    data = await api("/api/review");
  } catch (error) {
    say(error.message, true);
    return;
  }
  const skipped = Object.entries(data.skipped).map(([reason, n]) => `${reason} ${n}`).join(", ");
  $("review-summary").textContent = `${data.file}: ${data.valid_records} ${data.valid_records === 1 ? "trajectory" : "trajectories"}, ` +
    `${count(data.steers, "steer")}` +
    ` (${data.without_corrections} without corrections)` + (skipped ? `; skipped lines: ${skipped}` : "") +
    `. Highlighted: the tokens each steer trains on (span mode ${data.span}), as localpref data inspect shows them.` +
    (data.shown < data.records ? ` Showing the last ${data.shown}.` : "");
  $("review-list").replaceChildren(...data.entries.map(recordView));
}

// ---------------------------------------------------------------------------------------------
// Compare

async function compare() {
  comparing = new AbortController();
  $("compare-run").disabled = true;
  $("compare-stop").disabled = false;
  const columns = {a: $("compare-a"), b: $("compare-b")};
  columns.a.replaceChildren();
  columns.b.replaceChildren();
  try {
    await stream("/api/compare", promptAndSettings(), (message) => {
      if (message.side) columns[message.side].append(message.piece);
      else if (message.done) {
        for (const side of ["a", "b"]) if (message.done[side].ended) columns[side].append(el("span", "muted", " ⏎"));
        say(`same prompt, seed ${message.sampling.seed}, temperature ${message.sampling.temperature}`);
      } else if (message.error) say(message.error, true);
    }, comparing.signal);
  } catch (error) {
    if (error.name !== "AbortError") say(error.message, true);
  }
  comparing = null;
  $("compare-run").disabled = false;
  $("compare-stop").disabled = true;
}

// ---------------------------------------------------------------------------------------------
// Wiring

function showTab(name) {
  for (const button of document.querySelectorAll("button.tab")) {
    button.setAttribute("aria-pressed", String(button.dataset.tab === name));
  }
  for (const tab of ["steer", "compare", "review"]) $(`tab-${tab}`).hidden = tab !== name;
  $("prompt-panel").hidden = name === "review";
  if (name === "review") loadReview();
}

async function start() {
  info = await api("/api/info");
  $("model-id").textContent = info.model;
  $("out-path").textContent = info.out;
  for (const key of ["temperature", "top_p", "seed", "max_new_tokens"]) $(key).value = String(info.defaults[key]);
  $("max_new_tokens").max = String(info.limits.max_new_tokens);
  $("system").parentElement.hidden = !info.chat;
  $("compare-a-title").textContent = info.model;
  if (info.compare_model) $("compare-b-title").textContent = info.compare_model;
  else {
    $("compare-note").textContent = "Start the server with --compare MODEL (a training run or its export) " +
      "or --compare-adapter ADAPTER to compare it with this model.";
    $("compare-run").disabled = true;
  }
  for (const button of document.querySelectorAll("button.tab")) {
    button.addEventListener("click", () => showTab(button.dataset.tab));
  }
  $("generate").addEventListener("click", generate);
  $("stop").addEventListener("click", stop);
  $("continue").addEventListener("click", run);
  $("accept").addEventListener("click", () => finish("accept"));
  $("discard").addEventListener("click", () => finish("discard"));
  $("resume").addEventListener("click", resume);
  $("cancel").addEventListener("click", () => {
    picked = null;
    $("correction").hidden = true;
    renderAnswer();
  });
  $("answer").addEventListener("click", (event) => {
    const word = event.target.closest(".word");
    if (word && !generating && current && current.status !== "closed") pick(word);
  });
  $("compare-run").addEventListener("click", compare);
  $("compare-stop").addEventListener("click", () => comparing && comparing.abort());
  refresh();
}

start().catch((error) => say(`cannot reach the server: ${error.message}`, true));
