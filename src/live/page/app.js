// Gavel's live auction page. Plain JavaScript, no build step, no third-party code.
//
// "/" lists auctions; "/a/{id}" shows one live over the auction's SSE stream. Rules:
// - last version wins: a frame (or a REST read) older than what is shown is ignored, so the
//   page never shows an older state after a newer one, across reconnects too;
// - the page reconnects by itself, resuming with ?sinceVersion=, to its own node or to another
//   node of the cluster (see "Nodes" below), so it outlives the node that served it;
// - the token comes from the form or from "#token=..." in the URL, and is kept in
//   localStorage; streams get it as ?access_token= (that also keeps a stream from another node
//   a CORS "simple request", which needs no preflight).
"use strict";

const TOKEN_KEY = "gavel.token";
const RECONNECT_MS_MIN = 500;
const RECONNECT_MS_MAX = 10000;
// Ticks this page asks for: one after 5 s without another frame (the default is 1 s).
const TICK_MS = 5000;
// A stream that brings no byte this long is taken for dead: while the auction runs a frame
// comes at least every TICK_MS, and a keepalive comment every 15 s in any case.
const STREAM_SILENCE_MS_MAX = 20000;
// The longest SSE record the page buffers (frames are a few hundred bytes).
const SSE_RECORD_CHARS_MAX = 65536;
// The longest Retry-After the page takes at its word, in seconds.
const RETRY_AFTER_S_MAX = 300;
const NODES_MAX = 64;
const NODES_REFRESH_MS = 60000;
const NODES_FETCH_TIMEOUT_MS = 5000;
const HISTORY_SHOWN_MAX = 50;
const HISTORY_REFETCH_MS_MIN = 1000;
const HISTORY_REFETCH_JITTER_MS = 2000;
const COUNTDOWN_REDRAW_MS = 200;
const LIST_REFRESH_MS = 10000;
const MONEY_SCALE = 6n;

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------------
// Token

function takeTokenFromFragment() {
  const match = location.hash.match(/(?:^#|&)token=([^&]+)/);
  if (match) {
    localStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
}

function token() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

function claims() {
  try {
    const part = token().split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part));
  } catch (_) {
    return null;
  }
}

function canBid() {
  const c = claims();
  return !!c && Array.isArray(c.roles) && (c.roles.includes("bidder") || c.roles.includes("admin"));
}

function showWho() {
  const c = claims();
  $("who").textContent = c ? `${c.sub} (${(c.roles || []).join(", ")})` : "not signed in";
}

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: `Bearer ${token()}` }, options.headers || {});
  const response = await fetch(path, Object.assign({}, options, { headers }));
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  if (!response.ok) {
    const detail = body && body.detail ? body.detail : `HTTP ${response.status}`;
    const error = new Error(detail);
    error.status = response.status;
    throw error;
  }
  return body;
}

// ---------------------------------------------------------------------------------------------
// Money and time

// Exact decimal arithmetic on the API's money strings, in millionths.
function toMicros(text) {
  const [int, frac = ""] = String(text).split(".");
  return BigInt(int) * 10n ** MONEY_SCALE + BigInt((frac + "000000").slice(0, 6));
}

function fromMicros(micros) {
  const unit = 10n ** MONEY_SCALE;
  const int = micros / unit;
  let frac = (micros % unit).toString().padStart(6, "0").replace(/0+$/, "");
  if (frac.length < 2) frac = frac.padEnd(2, "0");
  return `${int}.${frac}`;
}

function formatRemaining(ms) {
  const total = Math.max(0, Math.ceil(ms / 1000));
  const d = Math.floor(total / 86400);
  const h = Math.floor((total % 86400) / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  const two = (n) => String(n).padStart(2, "0");
  if (d > 0) return `${d}d ${two(h)}:${two(m)}:${two(s)}`;
  if (h > 0) return `${h}:${two(m)}:${two(s)}`;
  return `${two(m)}:${two(s)}`;
}

function formatTime(text) {
  const date = new Date(text);
  return isNaN(date) ? text : date.toLocaleString();
}

// ---------------------------------------------------------------------------------------------
// The list of auctions

const list = { cursor: null, timer: null };

async function loadList(append) {
  const status = $("status-filter").value;
  const params = new URLSearchParams({ limit: "50", consistency: "local" });
  if (status) params.set("status", status);
  if (append && list.cursor) params.set("cursor", list.cursor);
  $("list-message").textContent = "";
  try {
    const page = await api(`/auctions?${params}`);
    const body = $("auctions");
    if (!append) body.replaceChildren();
    for (const a of page.auctions) body.appendChild(auctionRow(a));
    list.cursor = page.nextCursor;
    $("more").hidden = !page.nextCursor;
    if (!append && page.auctions.length === 0) $("list-message").textContent = "No auctions.";
  } catch (error) {
    $("list-message").textContent = error.status === 401
      ? "Paste a token above to see auctions."
      : `Cannot list auctions: ${error.message}`;
  }
}

function auctionRow(a) {
  const row = document.createElement("tr");
  const cell = (text, cls) => {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  };
  const link = document.createElement("a");
  link.href = `/a/${encodeURIComponent(a.id)}`;
  link.textContent = a.postId;
  cell("").appendChild(link);
  cell(a.status);
  cell(a.currentPrice, "num");
  cell(a.currentWinnerId || "—");
  cell(formatTime(a.endAt));
  return row;
}

function startList() {
  $("list-view").hidden = false;
  $("status-filter").addEventListener("change", () => loadList(false));
  $("refresh").addEventListener("click", () => loadList(false));
  $("more").addEventListener("click", () => loadList(true));
  loadList(false);
  list.timer = setInterval(() => {
    if (!document.hidden) loadList(false);
  }, LIST_REFRESH_MS);
}

// ---------------------------------------------------------------------------------------------
// One auction, live

const live = {
  id: null,
  details: null, // startPrice, minIncrement, postId: fixed at creation
  version: 0, // the newest version shown
  status: null,
  price: null,
  winner: null,
  remainingMs: 0,
  remainingAt: 0, // performance.now() when remainingMs was true
  ended: false,
  stream: null, // { node, controller, silence, open } of the stream being read
  attempts: 0, // reconnects since a stream last brought a frame
  history: new Map(), // version -> { amount, bidder }
  historyTimer: null,
};

function applyState(s) {
  // s: { version, status, price, winner, endAt, remainingMs? }
  if (s.version < live.version) return false;
  const priceChanged = live.price !== null && s.price !== live.price;
  live.version = s.version;
  live.status = s.status;
  live.price = s.price;
  live.winner = s.winner;
  if (typeof s.remainingMs === "number") {
    live.remainingMs = s.remainingMs;
    live.remainingAt = performance.now();
  }
  $("price").textContent = s.price;
  if (priceChanged) {
    $("price").classList.remove("flash");
    void $("price").offsetWidth;
    $("price").classList.add("flash");
  }
  $("winner").textContent = s.winner || "no bids yet";
  $("winner-label").textContent = s.status === "ended" ? "Winner" : "Leading bidder";
  $("status").textContent = s.status;
  $("status").className = `badge ${s.status}`;
  $("version").textContent = String(s.version);
  if (s.endAt) $("end-at").textContent = formatTime(s.endAt);
  updateBidForm();
  drawCountdown();
  return true;
}

function onFrame(frame) {
  if (frame.auctionId !== live.id) return;
  if (frame.type === "tick") {
    if (frame.version !== live.version) return;
    live.remainingMs = frame.remainingMs;
    live.remainingAt = performance.now();
    drawCountdown();
    return;
  }
  const before = live.version;
  const applied = applyState({
    version: frame.version,
    status: frame.status,
    price: frame.currentPrice,
    winner: frame.winnerId,
    endAt: frame.endAt,
    remainingMs: frame.remainingMs,
  });
  if (applied && frame.type === "bid") {
    if (frame.version === before + 1 && frame.winnerId) {
      live.history.set(frame.version, { amount: frame.currentPrice, bidder: frame.winnerId });
      drawHistory();
    } else {
      scheduleHistoryRefetch();
    }
  } else if (applied && frame.version > before + 1) {
    scheduleHistoryRefetch();
  }
  if (frame.type === "ended") {
    live.ended = true;
    live.status = "ended";
    $("connection").textContent = "auction ended";
    $("connection").className = "connection";
    drawCountdown();
    updateBidForm();
  }
}

function drawCountdown() {
  const el = $("countdown");
  if (live.ended || live.status === "ended") {
    el.textContent = "Ended";
    el.className = "countdown ended";
    $("countdown-label").textContent = "Auction";
    return;
  }
  el.className = "countdown";
  let remaining = live.remainingMs;
  if (live.status !== "paused") remaining -= performance.now() - live.remainingAt;
  if (live.status === "paused") {
    $("countdown-label").textContent = "Paused with";
  } else if (live.status === "scheduled") {
    $("countdown-label").textContent = "Until the end (not started)";
  } else {
    $("countdown-label").textContent = "Time left";
  }
  el.textContent = remaining <= 0 && live.status === "active" ? "Ending…" : formatRemaining(remaining);
}

function drawHistory() {
  const versions = [...live.history.keys()].sort((a, b) => b - a).slice(0, HISTORY_SHOWN_MAX);
  const items = versions.map((v) => {
    const entry = live.history.get(v);
    const li = document.createElement("li");
    li.textContent = entry.amount;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = entry.bidder;
    li.appendChild(who);
    return li;
  });
  $("history").replaceChildren(...items);
}

async function loadHistory() {
  try {
    const path = `/auctions/${encodeURIComponent(live.id)}/bids?status=accepted&limit=1000&consistency=local`;
    let page = await api(path);
    const fetched = [];
    for (let pages = 0; pages < 100; pages++) {
      fetched.push(...page.bids);
      if (!page.nextCursor) break;
      page = await api(`${path}&cursor=${encodeURIComponent(page.nextCursor)}`);
    }
    for (const bid of fetched) {
      live.history.set(bid.version, { amount: bid.amount, bidder: bid.bidderId });
    }
    drawHistory();
  } catch (error) {
    $("auction-message").textContent = `Cannot load the bid history: ${error.message}`;
  }
}

// Gaps (coalesced frames, reconnects) are filled from the REST history, spread out in time so
// that a crowd does not ask all at once.
function scheduleHistoryRefetch() {
  if (live.historyTimer) return;
  const wait = HISTORY_REFETCH_MS_MIN + Math.random() * HISTORY_REFETCH_JITTER_MS;
  live.historyTimer = setTimeout(() => {
    live.historyTimer = null;
    loadHistory();
  }, wait);
}

// ---------------------------------------------------------------------------------------------
// Nodes: where the stream may come from
//
// The page streams from its own node first. When a stream drops it tries again after a
// jittered exponential backoff (a crowd whose node died spreads its reconnects), preferring
// another node than the one that just failed, and never asks a node again before the
// Retry-After of its 503 (at --viewers-max, or behind the version asked for) ran out. The
// other nodes come from GET /cluster/endpoints, read at load and every NODES_REFRESH_MS.
//
// The stream is read with fetch() rather than EventSource or WebSocket because only fetch shows
// a refusal's status and Retry-After. REST calls (the auction, its history, bids) stay on the
// page's own node: they send the token in a header, which from another origin needs a CORS
// preflight the API does not answer (only the stream and the node list may be read from other
// origins). When the page's node is gone the stream carries on elsewhere, while bids and
// history fail with a message until the page is reloaded from a live node.

const nodes = {
  urls: [location.origin], // origins to stream from, the page's own first
  failedAt: new Map(), // origin -> Date.now() of its last failed or dropped stream
  retryAt: new Map(), // origin -> Date.now() before which its Retry-After says not to ask
};

// An origin from the node list, or null: the page's scheme (an https page cannot stream from
// an http node), nothing but scheme, host and port.
function nodeOrigin(text) {
  try {
    const url = new URL(text);
    const plain = url.pathname === "/" && !url.search && !url.hash && !url.username && !url.password;
    return url.protocol === location.protocol && plain ? url.origin : null;
  } catch (_) {
    return null;
  }
}

async function refreshNodes() {
  const from = live.stream ? live.stream.node : location.origin;
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), NODES_FETCH_TIMEOUT_MS);
  try {
    const response = await fetch(`${from}/cluster/endpoints`, {
      signal: controller.signal,
      credentials: "omit",
      cache: "no-store",
    });
    const body = response.ok ? await response.json() : null;
    if (!body || !Array.isArray(body.endpoints)) return;
    const listed = body.endpoints.map(nodeOrigin).filter(Boolean);
    nodes.urls = [...new Set([location.origin, ...listed])].slice(0, NODES_MAX);
    for (const known of [nodes.failedAt, nodes.retryAt]) {
      for (const url of [...known.keys()]) if (!nodes.urls.includes(url)) known.delete(url);
    }
  } catch (_) {
    // Keep the list we have; it holds the page's own node at least.
  } finally {
    clearTimeout(timer);
  }
}

// Where to stream from next, and after how long.
function nextAttempt(failed) {
  const now = Date.now();
  const backoff = Math.random() * Math.min(RECONNECT_MS_MAX, RECONNECT_MS_MIN * 2 ** live.attempts);
  const others = nodes.urls.filter((url) => url !== failed);
  const pool = others.length > 0 ? others : nodes.urls;
  const freeAt = (url) => Math.max(now + backoff, nodes.retryAt.get(url) || 0);
  const lastFailed = (url) => nodes.failedAt.get(url) || 0;
  // Free soonest first, then the one that failed longest ago (or never), random among equals.
  const rank = (a, b) => freeAt(a) - freeAt(b) || lastFailed(a) - lastFailed(b);
  const best = [...pool].sort(rank)[0];
  const ties = pool.filter((url) => rank(url, best) === 0);
  const node = ties[Math.floor(Math.random() * ties.length)];
  return { node, wait: freeAt(node) - now };
}

function retryAfterS(response) {
  const seconds = parseInt(response.headers.get("Retry-After") || "", 10);
  return Number.isFinite(seconds) && seconds > 0 ? Math.min(seconds, RETRY_AFTER_S_MAX) : null;
}

// ---------------------------------------------------------------------------------------------
// The stream

async function connect(node) {
  if (live.ended) return;
  // The countdown runs locally from each frame's remainingMs; sparse ticks only resync it.
  const params = new URLSearchParams({ access_token: token(), tickMs: String(TICK_MS) });
  if (live.version > 0) params.set("sinceVersion", String(live.version));
  const url = `${node}/auctions/${encodeURIComponent(live.id)}/stream?${params}`;
  const stream = { node, controller: new AbortController(), silence: null, open: false };
  live.stream = stream;
  let refusal = { status: 0, retryAfterS: null };
  try {
    keepWatching(stream);
    const response = await fetch(url, {
      signal: stream.controller.signal,
      credentials: "omit",
      cache: "no-store",
    });
    if (response.ok) {
      await readRecords(response, stream);
    } else {
      refusal = { status: response.status, retryAfterS: retryAfterS(response) };
    }
  } catch (_) {
    // The node died, is unreachable or went silent: try again, elsewhere.
  } finally {
    clearTimeout(stream.silence);
  }
  if (live.stream !== stream || live.ended) return;
  live.stream = null;
  // A refused token or a malformed request fails on every node alike: retrying cannot help.
  if ([400, 401, 403].includes(refusal.status)) {
    $("connection").textContent = "not connected";
    $("connection").className = "connection";
    $("auction-message").textContent = refusal.status === 400
      ? "The stream refused this page's request."
      : "The stream refused the token: paste a valid one above.";
    return;
  }
  reconnect(node, refusal.retryAfterS);
}

function reconnect(failed, retryAfterS) {
  const now = Date.now();
  nodes.failedAt.set(failed, now);
  if (retryAfterS !== null) nodes.retryAt.set(failed, now + retryAfterS * 1000);
  const { node, wait } = nextAttempt(failed);
  live.attempts += 1;
  $("connection").textContent = "reconnecting…";
  $("connection").className = "connection";
  setTimeout(() => connect(node), wait);
}

// Aborts the stream when it stays silent for STREAM_SILENCE_MS_MAX.
function keepWatching(stream) {
  clearTimeout(stream.silence);
  stream.silence = setTimeout(() => stream.controller.abort(), STREAM_SILENCE_MS_MAX);
}

// Reads SSE records ("field: value" lines, a blank line after each; the server ends lines with
// "\n") until the body ends.
async function readRecords(response, stream) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    keepWatching(stream);
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      onRecord(buffer.slice(0, end), stream);
      buffer = buffer.slice(end + 2);
    }
    if (buffer.length > SSE_RECORD_CHARS_MAX) throw new Error("an SSE record beyond the bound");
  }
}

function onRecord(record, stream) {
  const data = record
    .split("\n")
    .filter((line) => line.startsWith("data:"))
    .map((line) => line.slice(5).replace(/^ /, ""))
    .join("\n");
  if (!data) return; // a keepalive comment
  if (!stream.open) {
    stream.open = true;
    live.attempts = 0;
    $("connection").textContent = "live";
    $("connection").className = "connection live";
    $("via").textContent = `via ${new URL(stream.node).host}`;
  }
  try {
    onFrame(JSON.parse(data));
  } catch (error) {
    console.error("bad frame", error);
  }
}

function updateBidForm() {
  const form = $("bid-form");
  form.hidden = !canBid() || live.ended || live.status === "ended" || !live.details;
  if (form.hidden || document.activeElement === $("bid-amount")) return;
  $("bid-amount").value = nextMinimum();
}

function nextMinimum() {
  if (!live.details || live.price === null) return "";
  if (!live.winner) return live.details.startPrice;
  return fromMicros(toMicros(live.price) + toMicros(live.details.minIncrement));
}

function idempotencyKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function placeBid(event) {
  event.preventDefault();
  const result = $("bid-result");
  const amount = $("bid-amount").value.trim();
  $("bid-submit").disabled = true;
  result.textContent = "…";
  result.className = "bid-result";
  try {
    const reply = await api(`/auctions/${encodeURIComponent(live.id)}/bids`, {
      method: "POST",
      headers: { "Content-Type": "application/json", "Idempotency-Key": idempotencyKey() },
      body: JSON.stringify({ amount }),
    });
    result.textContent = reply.status === "accepted"
      ? `accepted at ${reply.amount}`
      : `rejected: ${reply.reason.replace(/_/g, " ")}`;
    result.className = `bid-result ${reply.status}`;
  } catch (error) {
    result.textContent = error.message;
    result.className = "bid-result error";
  } finally {
    $("bid-submit").disabled = false;
    $("bid-amount").blur();
    updateBidForm();
  }
}

async function startAuction(id) {
  live.id = id;
  $("auction-view").hidden = false;
  refreshNodes();
  $("bid-form").addEventListener("submit", placeBid);
  try {
    const a = await api(`/auctions/${encodeURIComponent(id)}?consistency=local`);
    live.details = { startPrice: a.startPrice, minIncrement: a.minIncrement };
    $("title").textContent = a.postId;
    document.title = `${a.postId} · Gavel`;
    applyState({
      version: a.version,
      status: a.status,
      price: a.currentPrice,
      winner: a.currentWinnerId,
      endAt: a.endAt,
      // Until the stream's snapshot says better (it knows pauses): the local clock's view.
      remainingMs: a.status === "paused" ? 0 : Math.max(0, Date.parse(a.endAt) - Date.now()),
    });
  } catch (error) {
    $("auction-message").textContent = error.status === 401
      ? "Paste a token above to watch this auction."
      : `Cannot load the auction: ${error.message}`;
    if (error.status === 401 || error.status === 404) return;
  }
  loadHistory();
  connect(location.origin);
  setInterval(drawCountdown, COUNTDOWN_REDRAW_MS);
  setInterval(refreshNodes, NODES_REFRESH_MS);
}

// ---------------------------------------------------------------------------------------------

function main() {
  takeTokenFromFragment();
  showWho();
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token-input").value.trim();
    if (value) localStorage.setItem(TOKEN_KEY, value);
    location.reload();
  });
  const match = location.pathname.match(/^\/a\/([A-Za-z0-9_.-]{1,128})$/);
  if (match) {
    startAuction(match[1]);
  } else {
    startList();
  }
}

main();
