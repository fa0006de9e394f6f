"use strict";
// The batch-runner viewer: a live X/Y/Z grid over the items embedded in #report-data.
const DATA = JSON.parse(document.getElementById("report-data").textContent);
const BLANK = "\u2205blank";  // the filter value of an empty or missing cell
const PER_PAGE = [12, 25, 50, 100, 0];  // rows a page; 0 is every row
const CELL_LIMIT = 16;  // tiles a cell shows before "+N more"
const PICKS_KEY = "batch-runner picks " + DATA.key;
const SETTINGS_KEY = "batch-runner view " + DATA.key;
const RATINGS_KEY = "batch-runner ratings " + DATA.key;

const ITEMS = DATA.items.map((row, index) => {
  const item = {index};
  DATA.fields.forEach((field, j) => { item[field] = row[j]; });
  return item;
});
const BY_UID = new Map(ITEMS.map(item => [item.uid, item]));
const ORDER = {};  // column -> Map(key -> rank), in plan order: first appearance
function rank(column, k) {
  if (!ORDER[column]) {
    const ranks = new Map();
    for (const item of ITEMS) { const v = key(item[column]); if (!ranks.has(v)) ranks.set(v, ranks.size); }
    ORDER[column] = ranks;
  }
  return ORDER[column].get(k) ?? 1e9;
}

function key(value) { return value == null || value === "" ? BLANK : String(value); }
function label(column, k) {
  if (k === BLANK) return "(blank)";
  const named = DATA.labels[column];
  return (named && named[k]) || k;
}
function labelNode(column, k) {  // a value as text, with colour swatches for a custom palette
  const span = document.createElement("span");
  const colours = column === "color_palette" && DATA.swatches[k];
  if (colours) {
    for (const [hex] of colours) {
      const s = document.createElement("span"); s.className = "swatch"; s.style.background = hex; span.appendChild(s);
    }
    span.appendChild(document.createTextNode(" "));
  }
  span.appendChild(document.createTextNode(label(column, k)));
  return span;
}

// ------------------------------------------------------------------ state
// The view (axes, filters, page, ...) lives in the URL hash, so a link shares it; the session
// keeps it too, for a reload of the bare file. The hash wins.
const VIEW_FIELDS = ["rows", "cols", "page", "pageValue", "rowPage", "filters", "search", "picksOnly", "perPage",
  "differOnly"];
function fromHash() {
  const match = /(?:^#|&)view=([^&]*)/.exec(location.hash);
  if (!match) return null;
  try { return JSON.parse(decodeURIComponent(match[1])); } catch (e) { return null; }
}
const saved = fromHash()
  || (() => { try { return JSON.parse(sessionStorage.getItem(SETTINGS_KEY)) || {}; } catch (e) { return {}; } })();
const state = {
  rows: DATA.layout.rows || "", cols: DATA.layout.cols || "", page: DATA.layout.page || "",
  pageValue: null, rowPage: 0, filters: {}, search: "", picksOnly: false, perPage: 12, differOnly: false,
  expanded: new Set(),
};
function adopt(view) {
  for (const field of VIEW_FIELDS) if (view && field in view) state[field] = view[field];
  for (const axis of ["rows", "cols", "page"]) if (state[axis] && !DATA.axes.includes(state[axis])) state[axis] = "";
  const filters = {};  // each a list of keys (an older saved view held one key)
  for (const [column, keys] of Object.entries(state.filters || {})) {
    const list = (Array.isArray(keys) ? keys : [keys]).filter(k => typeof k === "string" && k);
    if (list.length && DATA.filters.includes(column)) filters[column] = list;
  }
  state.filters = filters;
  if (!PER_PAGE.includes(Number(state.perPage))) state.perPage = 12;
  state.perPage = Number(state.perPage);
}
adopt(saved);
function viewOf() { const view = {}; for (const field of VIEW_FIELDS) view[field] = state[field]; return view; }
let lastHash = "";
function remember() {
  const view = JSON.stringify(viewOf());
  lastHash = "#view=" + encodeURIComponent(view);
  if (location.hash !== lastHash) history.replaceState(null, "", lastHash);
  try { sessionStorage.setItem(SETTINGS_KEY, view); } catch (e) { /* storage may be off; the view still works */ }
}

let picks = new Set();
try { picks = new Set(JSON.parse(localStorage.getItem(PICKS_KEY)) || []); } catch (e) { picks = new Set(); }
for (const uid of [...picks]) if (!BY_UID.has(uid)) picks.delete(uid);
let ratings = new Map();  // uid -> 1..5, beside the star: how much a picked (or any) image is liked
try { ratings = new Map(Object.entries(JSON.parse(localStorage.getItem(RATINGS_KEY)) || {})); } catch (e) { ratings = new Map(); }
for (const [uid, n] of [...ratings]) if (!BY_UID.has(uid) || !(n >= 1 && n <= 5)) ratings.delete(uid);

// ------------------------------------------------------------------ controls
const $ = id => document.getElementById(id);
function fillAxis(select, value, allowNone) {
  select.replaceChildren();
  if (allowNone) select.add(new Option("—", ""));
  for (const axis of DATA.axes) select.add(new Option(axis, axis));
  select.value = value;
}
fillAxis($("axis-rows"), state.rows, true);
fillAxis($("axis-cols"), state.cols, true);
fillAxis($("axis-page"), state.page, true);
for (const [id, axis] of [["axis-rows", "rows"], ["axis-cols", "cols"], ["axis-page", "page"]]) {
  $(id).addEventListener("change", () => {
    state[axis] = $(id).value; state.rowPage = 0; state.expanded.clear();
    if (axis === "page") state.pageValue = null;
    render();
  });
}
$("page-value").addEventListener("change", () => { state.pageValue = $("page-value").value; state.rowPage = 0; render(); });
function stepPageValue(delta) {
  const select = $("page-value");
  const next = select.selectedIndex + delta;
  if (next >= 0 && next < select.options.length) { state.pageValue = select.options[next].value; state.rowPage = 0; render(); }
}
$("pv-prev").addEventListener("click", () => stepPageValue(-1));
$("pv-next").addEventListener("click", () => stepPageValue(1));
$("size").addEventListener("input", () => document.documentElement.style.setProperty("--tile", $("size").value + "px"));

const filterBox = $("filters");
for (const column of DATA.filters) {
  const keys = [...new Set(ITEMS.map(item => key(item[column])))].sort((a, b) => rank(column, a) - rank(column, b));
  const select = document.createElement("select");
  select.dataset.column = column; select.multiple = true;  // ctrl/⌘-click (a tap on a phone) picks several
  select.add(new Option("all", ""));
  if (keys.includes(BLANK)) select.add(new Option("(blank)", BLANK));
  for (const k of keys) if (k !== BLANK) select.add(new Option(label(column, k), k));
  select.size = Math.min(4, select.options.length);
  const chosen = (state.filters[column] || []).filter(k => keys.includes(k));
  for (const option of select.options) option.selected = chosen.length ? chosen.includes(option.value) : !option.value;
  if (chosen.length) state.filters[column] = chosen; else delete state.filters[column];
  select.addEventListener("change", () => {
    // "all" and values exclude each other: whichever was chosen last wins (ctrl/⌘-click adds a value).
    const before = new Set(state.filters[column] || [""]);
    let picked = [...select.selectedOptions].map(o => o.value);
    if (picked.includes("") && (!before.has("") || picked.length === 1)) picked = [];
    else picked = picked.filter(v => v);
    for (const option of select.options) option.selected = picked.length ? picked.includes(option.value) : !option.value;
    if (picked.length) state.filters[column] = picked; else delete state.filters[column];
    state.rowPage = 0; render();
  });
  const wrap = document.createElement("label");
  wrap.append(column, select);
  filterBox.appendChild(wrap);
}
const search = document.createElement("input");
search.type = "search"; search.placeholder = "search prompts"; search.id = "search"; search.value = state.search;
search.addEventListener("input", () => { state.search = search.value; state.rowPage = 0; render(); });
filterBox.appendChild(search);
$("per-page").value = String(state.perPage);
$("per-page").addEventListener("change", () => { state.perPage = Number($("per-page").value); state.rowPage = 0; render(); });
$("differ-only").checked = state.differOnly;
$("differ-only").disabled = !DATA.filters.includes("text_ok");
$("differ-only").addEventListener("change", () => { state.differOnly = $("differ-only").checked; state.rowPage = 0; render(); });
$("picks-only").checked = state.picksOnly;
$("picks-only").addEventListener("change", () => { state.picksOnly = $("picks-only").checked; state.rowPage = 0; render(); });
$("first").addEventListener("click", () => { state.rowPage = 0; render(); });
$("prev").addEventListener("click", () => { state.rowPage -= 1; render(); });
$("next").addEventListener("click", () => { state.rowPage += 1; render(); });
$("last").addEventListener("click", () => { state.rowPage = 1e9; render(); });
$("clear-picks").addEventListener("click", () => {
  if (picks.size && confirm(`Forget all ${picks.size} picks?`)) { picks.clear(); savePicks(); render(); }
});

// ------------------------------------------------------------------ filtering and layout
function matching() {
  const needle = state.search.toLowerCase();
  const active = Object.entries(state.filters).filter(([, v]) => v && v.length).map(([c, v]) => [c, new Set(v)]);
  const found = ITEMS.filter(item => active.every(([c, v]) => v.has(key(item[c])))
    && (!needle || String(item.prompt ?? "").toLowerCase().includes(needle))
    && (!state.picksOnly || picks.has(item.uid)));
  return state.differOnly ? differing(found) : found;
}
function ordered(items, column) {  // the distinct keys of column among items, in plan order
  if (!column) return [""];
  return [...new Set(items.map(item => key(item[column])))].sort((a, b) => rank(column, a) - rank(column, b));
}
const axisKey = (item, column) => column ? key(item[column]) : "";

let VIEW = {order: [], items: []};  // the lightbox walks VIEW.order: every matching item, in grid order

function differing(items) {  // the items of rows whose checked images disagree: some read right, some wrong
  const rowOf = item => axisKey(item, state.page) + "\u0000" + axisKey(item, state.rows);
  const seen = new Map();
  for (const item of items) if (item.text_ok != null) seen.set(rowOf(item), (seen.get(rowOf(item)) || 0) | (item.text_ok ? 1 : 2));
  return items.filter(item => seen.get(rowOf(item)) === 3);
}

function layoutOf(items) {
  const pageKeys = ordered(items, state.page);
  if (state.page && !pageKeys.includes(state.pageValue)) state.pageValue = pageKeys[0] ?? null;
  const onPage = state.page ? items.filter(item => axisKey(item, state.page) === state.pageValue) : items;
  const rowKeys = ordered(onPage, state.rows), colKeys = ordered(onPage, state.cols);
  const position = item => [
    state.page ? pageKeys.indexOf(axisKey(item, state.page)) : 0,
    rank(state.rows, axisKey(item, state.rows)), rank(state.cols, axisKey(item, state.cols)), item.index];
  const order = items.map(item => [position(item), item]).sort((a, b) => {
    for (let i = 0; i < 4; i++) if (a[0][i] !== b[0][i]) return a[0][i] - b[0][i];
    return 0;
  }).map(pair => pair[1]);
  return {pageKeys, onPage, rowKeys, colKeys, order};
}

function caption(item) {  // what tells the items of one cell apart: the varying values not on an axis
  const shown = new Set([state.rows, state.cols, state.page, "pair"]);
  return DATA.axes.filter(a => !shown.has(a) && item[a] != null)
    .map(a => a === "prompt" ? String(item[a]) : `${a}=${label(a, key(item[a]))}`).join(" · ");
}

function tile(item, showCaption) {
  const div = document.createElement("div");
  div.className = "tile " + item.status + (picks.has(item.uid) ? " picked" : "");
  div.dataset.uid = item.uid; div.tabIndex = 0;
  const box = document.createElement("div"); box.className = "img";
  if (item.status === "succeeded" && item.thumb) {
    const img = document.createElement("img");
    img.src = item.thumb; img.loading = "lazy"; img.alt = item.item_id; img.decoding = "async";
    box.appendChild(img);
  } else if (item.status === "failed") {
    const b = document.createElement("b"); b.textContent = "FAILED" + (item.http_status ? " " + item.http_status : "");
    const reason = document.createElement("span"); reason.className = "reason";
    reason.textContent = item.error || "(no message)";
    box.append(b, reason);
  } else {
    const b = document.createElement("b");
    b.textContent = item.status === "succeeded" ? "NO THUMBNAIL" : String(item.status).toUpperCase();
    box.appendChild(b);
  }
  div.appendChild(box);
  if (DATA.runs.length > 1 && state.rows !== "run" && state.cols !== "run" && state.page !== "run") {
    const badge = document.createElement("span"); badge.className = "badge"; badge.textContent = item.run;
    div.appendChild(badge);
  }
  const pick = document.createElement("button");
  pick.className = "pick"; pick.type = "button"; pick.title = "pick this image (p)";
  pick.textContent = picks.has(item.uid) ? "★" : "☆";
  div.appendChild(pick);
  if (ratings.has(item.uid)) {
    const r = document.createElement("span"); r.className = "rating"; r.textContent = ratings.get(item.uid) + "/5";
    div.appendChild(r);
  }
  const text = caption(item);
  if (showCaption && text) { const cap = document.createElement("div"); cap.className = "cap"; cap.textContent = text; div.appendChild(cap); }
  if (item.text_ok != null) {
    const t = document.createElement("span"); t.className = "text " + (item.text_ok ? "ok" : "wrong");
    t.textContent = item.text_ok ? "text ✓" : "text ✗"; t.title = `expected: ${item.text_expected}\nread: ${item.text_read}`;
    div.appendChild(t);
  }
  div.title = [text, item.status === "failed" ? "failed: " + (item.error || "") : ""].filter(Boolean).join("\n");
  return div;
}

function render() {
  const items = matching();
  const {pageKeys, onPage, rowKeys, colKeys, order} = layoutOf(items);
  VIEW = {order, items};
  // pages (the Z axis)
  const pv = $("page-value");
  pv.replaceChildren();
  for (const k of pageKeys) pv.add(new Option(label(state.page, k), k));
  pv.value = state.pageValue ?? "";
  $("pagevalue-nav").style.display = state.page ? "" : "none";
  // rows, a page of them at a time
  const perPage = state.perPage || Math.max(1, rowKeys.length);
  const pages = Math.max(1, Math.ceil(rowKeys.length / perPage));
  state.rowPage = Math.min(Math.max(0, state.rowPage), pages - 1);
  const first = state.rowPage * perPage;
  const shownRows = rowKeys.slice(first, first + perPage);
  const cells = new Map();
  for (const item of onPage) {
    const r = axisKey(item, state.rows);
    const c = axisKey(item, state.cols);
    const id = r + "\u0000" + c;
    if (!cells.has(id)) cells.set(id, []);
    cells.get(id).push(item);
  }
  const head = $("grid").tHead, body = $("grid").tBodies[0];
  const headRow = document.createElement("tr");
  const corner = document.createElement("th"); corner.className = "corner";
  corner.textContent = (state.rows || "—") + " ↓  " + (state.cols || "—") + " →";
  headRow.appendChild(corner);
  for (const c of colKeys) {
    const th = document.createElement("th"); th.dataset.key = c;
    th.appendChild(state.cols ? labelNode(state.cols, c) : document.createTextNode("items"));
    headRow.appendChild(th);
  }
  head.replaceChildren(headRow);
  const fragment = document.createDocumentFragment();
  for (const r of shownRows) {
    const tr = document.createElement("tr");
    const th = document.createElement("th"); th.className = "rowhead"; th.dataset.key = r;
    th.appendChild(state.rows ? labelNode(state.rows, r) : document.createTextNode(""));
    tr.appendChild(th);
    for (const c of colKeys) {
      const td = document.createElement("td");
      const here = cells.get(r + "\u0000" + c) || [];
      if (!here.length) { td.className = "empty"; td.textContent = "—"; tr.appendChild(td); continue; }
      const cellId = r + "\u0000" + c;
      const div = document.createElement("div"); div.className = "cell";
      const limit = state.expanded.has(cellId) ? here.length : CELL_LIMIT;
      for (const item of here.slice(0, limit)) div.appendChild(tile(item, here.length > 1));
      if (here.length > limit) {
        const more = document.createElement("button"); more.className = "more"; more.type = "button";
        more.textContent = `+${here.length - limit} more`;
        more.addEventListener("click", () => { state.expanded.add(cellId); render(); });
        div.appendChild(more);
      }
      td.appendChild(div); tr.appendChild(td);
    }
    fragment.appendChild(tr);
  }
  body.replaceChildren(fragment);
  $("rowrange").textContent = rowKeys.length
    ? `rows ${first + 1}–${first + shownRows.length} of ${rowKeys.length} (page ${state.rowPage + 1}/${pages})` : "no rows";
  $("first").disabled = $("prev").disabled = state.rowPage === 0;
  $("next").disabled = $("last").disabled = state.rowPage >= pages - 1;
  $("count").textContent = `${items.length} matching items (${ITEMS.length} in all)`
    + (state.page ? ` · ${onPage.length} on this page` : "");
  updatePicks();
  remember();
}

// ------------------------------------------------------------------ picks
function savePicks() {
  try { localStorage.setItem(PICKS_KEY, JSON.stringify([...picks])); } catch (e) { /* private mode: picks last the visit */ }
}
function togglePick(uid) {
  if (picks.has(uid)) picks.delete(uid); else picks.add(uid);
  savePicks();
  for (const el of document.querySelectorAll(`.tile[data-uid="${CSS.escape(uid)}"]`)) {
    el.classList.toggle("picked", picks.has(uid));
    el.querySelector(".pick").textContent = picks.has(uid) ? "★" : "☆";
  }
  if (state.picksOnly) render(); else updatePicks();
  if (!$("lightbox").hidden) showLightbox();
}
function rate(uid, n) {  // n 1..5, or the same n again to clear it
  if (ratings.get(uid) === n) ratings.delete(uid); else ratings.set(uid, n);
  try { localStorage.setItem(RATINGS_KEY, JSON.stringify(Object.fromEntries(ratings))); } catch (e) { /* private mode */ }
  render();
  if (!$("lightbox").hidden) showLightbox();
}
function pickRecords() {  // the picked images, and any other rated one (picked: false), for the CLI
  const fields = ["item_id", ...(DATA.runs.length > 1 ? ["run"] : []), "picked", "rating", "status", ...DATA.columns,
    "seed_value", "text_ok", "text_read", "image"];
  return {fields, records: ITEMS.filter(item => picks.has(item.uid) || ratings.has(item.uid)).map(item => {
    const record = {};
    for (const f of fields) record[f] = item[f] ?? null;
    record.item_id = item.uid.startsWith("B:") ? item.uid : item.item_id;
    record.picked = picks.has(item.uid);
    record.rating = ratings.get(item.uid) ?? null;
    return record;
  })};
}
function csvCell(value) {
  let text = value == null ? "" : String(value);
  // A text cell a spreadsheet would run as a formula is quoted with a leading ' (OWASP's advice).
  if (typeof value === "string" && /^[=+\-@\t\r]/.test(text)) text = "'" + text;
  return /[",\n\r']/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
}
function picksCSV() {
  const {fields, records} = pickRecords();
  return [fields.map(csvCell).join(","), ...records.map(r => fields.map(f => csvCell(r[f])).join(","))].join("\r\n") + "\r\n";
}
function picksJSON() {
  return JSON.stringify({report: DATA.title, picked: pickRecords().records}, null, 2) + "\n";
}
let links = [];
function tally() {  // picks, mean rating and text accuracy per variant: per value of the columns axis
  const axis = state.cols || state.rows;
  const box = $("tally");
  box.replaceChildren();
  if (!axis) return;
  const per = new Map();
  for (const item of ITEMS) {
    const k = key(item[axis]);
    if (!per.has(k)) per.set(k, {picks: 0, rated: 0, sum: 0, checked: 0, right: 0});
    const entry = per.get(k);
    if (picks.has(item.uid)) entry.picks += 1;
    if (ratings.has(item.uid)) { entry.rated += 1; entry.sum += ratings.get(item.uid); }
    if (item.text_ok != null) { entry.checked += 1; if (item.text_ok) entry.right += 1; }
  }
  box.append(`${axis}: `);
  for (const k of [...per.keys()].sort((a, b) => rank(axis, a) - rank(axis, b))) {
    const entry = per.get(k);
    const span = document.createElement("span"); span.className = "entry"; span.dataset.key = k;
    span.dataset.picks = String(entry.picks);
    const name = document.createElement("b"); name.textContent = label(axis, k);
    span.append(name, ` ★${entry.picks}`);
    if (entry.rated) span.append(` · ${(entry.sum / entry.rated).toFixed(1)}/5`);
    if (entry.checked) span.append(` · text ${entry.right}/${entry.checked}`);
    box.appendChild(span);
  }
}
function updatePicks() {
  $("pick-count").textContent = String(picks.size);
  tally();
  for (const url of links) URL.revokeObjectURL(url);
  links = [];
  for (const [id, text, type] of [["download-csv", picksCSV(), "text/csv"], ["download-json", picksJSON(), "application/json"]]) {
    const a = $(id);
    const url = URL.createObjectURL(new Blob([text], {type}));
    links.push(url);
    a.href = url;
    a.setAttribute("aria-disabled", picks.size ? "false" : "true");
    a.dataset.count = String(picks.size);
  }
}

// ------------------------------------------------------------------ lightbox
let current = -1;
function openAt(uid) {
  current = VIEW.order.findIndex(item => item.uid === uid);
  if (current < 0) return;
  $("lightbox").hidden = false;
  showLightbox();
}
function closeLightbox() {
  $("lightbox").hidden = true;
  const item = VIEW.order[current];
  const el = item && document.querySelector(`.tile[data-uid="${CSS.escape(item.uid)}"]`);
  if (el) el.focus();
}
function move(delta) {
  if (!VIEW.order.length) return;
  current = Math.min(Math.max(0, current + delta), VIEW.order.length - 1);
  showLightbox();
}
function row(name, value) {
  const tr = document.createElement("tr");
  const th = document.createElement("th"); th.textContent = name;
  const td = document.createElement("td");
  if (value instanceof Node) td.appendChild(value); else td.textContent = value == null ? "" : String(value);
  tr.append(th, td);
  return tr;
}
function showLightbox() {
  const item = VIEW.order[current];
  if (!item) return;
  const stage = $("lb-stage");
  stage.replaceChildren();
  if (item.status === "succeeded" && item.image) {
    const img = document.createElement("img");
    img.id = "lb-img"; img.alt = item.item_id; img.src = item.image;
    if (item.thumb) img.addEventListener("error", () => { img.src = item.thumb; }, {once: true});
    stage.appendChild(img);
  } else {
    const box = document.createElement("div"); box.className = item.status === "failed" ? "failed" : "pending";
    const b = document.createElement("h2"); b.textContent = String(item.status).toUpperCase();
    const p = document.createElement("p"); p.textContent = item.error || (item.status === "failed" ? "(no message)" : "not made yet");
    box.append(b, p); stage.appendChild(box);
  }
  $("lb-pos").textContent = `${current + 1} of ${VIEW.order.length}` + (DATA.runs.length > 1 ? ` · ${item.run}` : "");
  $("lb-pick").textContent = picks.has(item.uid) ? "★ picked" : "☆ pick";
  for (const b of $("lb-rate").children) b.setAttribute("aria-pressed", String(ratings.get(item.uid) === Number(b.dataset.n)));
  const table = $("lb-recipe");
  table.replaceChildren();
  table.appendChild(row("item_id", item.item_id));
  if (DATA.runs.length > 1) table.appendChild(row("run", item.run));
  table.appendChild(row("status", item.status + (item.http_status ? ` (HTTP ${item.http_status})` : "")));
  if (item.error) table.appendChild(row("error", item.error));
  for (const column of DATA.columns) {
    if (item[column] == null) continue;
    table.appendChild(row(column, column === "color_palette" ? labelNode(column, key(item[column])) : item[column]));
  }
  if (item.text_expected != null) {
    table.appendChild(row("text expected", item.text_expected));
    if (item.text_ok != null) {
      table.appendChild(row("text read", item.text_read));
      table.appendChild(row("text", (item.text_ok ? "right" : "wrong") + ` (score ${Number(item.text_score).toFixed(2)})`));
    }
  }
  for (const [name, value] of [["seed_value", item.seed_value], ["attempts", item.attempts],
    ["latency", item.latency_s == null ? null : Number(item.latency_s).toFixed(2) + " s"],
    ["cost", item.cost_usd == null ? null : "$" + Number(item.cost_usd).toFixed(3)], ["image", item.image]]) {
    if (value != null) table.appendChild(row(name, value));
  }
}
$("lb-prev").addEventListener("click", () => move(-1));
$("lb-next").addEventListener("click", () => move(1));
$("lb-close").addEventListener("click", closeLightbox);
$("lb-pick").addEventListener("click", () => { const item = VIEW.order[current]; if (item) togglePick(item.uid); });
$("lb-stage").addEventListener("click", event => {
  if (event.target === $("lb-stage") && !swiped) closeLightbox();
});
$("lb-rate").addEventListener("click", event => {
  const b = event.target.closest("button"); const item = VIEW.order[current];
  if (b && item) rate(item.uid, Number(b.dataset.n));
});
// Swipe left or right on the image (a finger, or a mouse drag) to move, as photo apps do.
let swipeFrom = null, swiped = false;
$("lb-stage").addEventListener("pointerdown", event => { swipeFrom = [event.clientX, event.clientY]; swiped = false; });
$("lb-stage").addEventListener("pointerup", event => {
  if (!swipeFrom) return;
  const dx = event.clientX - swipeFrom[0], dy = event.clientY - swipeFrom[1];
  swipeFrom = null;
  if (Math.abs(dx) > 40 && Math.abs(dx) > 1.5 * Math.abs(dy)) { swiped = true; move(dx < 0 ? 1 : -1); }
});
$("lb-stage").addEventListener("dragstart", event => event.preventDefault());
window.addEventListener("hashchange", () => {
  if (location.hash === lastHash) return;
  const view = fromHash();
  if (!view) return;
  adopt(view);
  syncControls();
  render();
});

$("grid").addEventListener("click", event => {
  const el = event.target.closest(".tile");
  if (!el) return;
  if (event.target.closest(".pick")) togglePick(el.dataset.uid); else openAt(el.dataset.uid);
});
document.addEventListener("keydown", event => {
  if (event.target.matches("input, select, textarea") || event.ctrlKey || event.metaKey || event.altKey) return;
  const open = !$("lightbox").hidden;
  if (open) {
    if (event.key === "ArrowRight") { move(1); event.preventDefault(); }
    else if (event.key === "ArrowLeft") { move(-1); event.preventDefault(); }
    else if (event.key === "Escape") closeLightbox();
    else if (event.key === "p" || event.key === "P") { const item = VIEW.order[current]; if (item) togglePick(item.uid); }
    else if (/^[1-5]$/.test(event.key)) { const item = VIEW.order[current]; if (item) rate(item.uid, Number(event.key)); }
    return;
  }
  const el = document.activeElement && document.activeElement.closest && document.activeElement.closest(".tile");
  if (!el) return;
  if (event.key === "Enter") { openAt(el.dataset.uid); event.preventDefault(); }
  else if (event.key === "p" || event.key === "P") togglePick(el.dataset.uid);
});

function syncControls() {  // the controls show the state (after a hash change)
  $("axis-rows").value = state.rows; $("axis-cols").value = state.cols; $("axis-page").value = state.page;
  for (const select of document.querySelectorAll("#filters select[data-column]")) {
    const chosen = state.filters[select.dataset.column] || [];
    for (const option of select.options) option.selected = chosen.length ? chosen.includes(option.value) : !option.value;
  }
  $("search").value = state.search; $("picks-only").checked = state.picksOnly;
  $("per-page").value = String(state.perPage); $("differ-only").checked = state.differOnly;
}

render();
window.viewer = {state, render, picks, ratings, picksCSV, picksJSON, view: () => VIEW};
requestAnimationFrame(() => setTimeout(() => {
  window.__gridPaintedAt = performance.now();
  document.body.dataset.painted = "1";
}, 0));
