// Tern's dashboard: built on the HTTP API only (whatever it shows, curl
// can get too). No framework: the DOM is made with el() and textContent,
// never from markup in data.
"use strict";

const ROW = 26; // px, the topic tree's row height (app.css .row)
// room2 before room10.
const collate = new Intl.Collator(undefined, { numeric: true });
const LIVE_MAX = 50; // live messages kept for the topic shown
let me = null; // { user, admin, csrf }

// ---------------------------------------------------------------- helpers

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

const $ = (id) => document.getElementById(id);

function say(text) {
  $("status").textContent = text;
  if (text) setTimeout(() => { if ($("status").textContent === text) $("status").textContent = ""; }, 4000);
}

async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers["content-type"] = "application/json";
  if (method !== "GET" && me && me.csrf) headers["x-csrf-token"] = me.csrf;
  const r = await fetch("/api/v1" + path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = { error: text }; }
  if (!r.ok) {
    const e = new Error((data && data.error) || r.statusText);
    e.status = r.status;
    e.data = data;
    throw e;
  }
  return data;
}

// A topic in a URL: each level encoded, the slashes kept.
const topicPath = (t) => t.split("/").map(encodeURIComponent).join("/");

function ago(ms) {
  if (ms === null || ms === undefined) return "never";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  if (s < 86400) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}

function clip(s, n) { return s.length > n ? s.slice(0, n) + "…" : s; }

// ---------------------------------------------------------------- session

async function start() {
  try {
    me = await api("GET", "/session");
  } catch (e) {
    showLogin(e.data && e.data.anonymous);
    return;
  }
  enter();
}

function showLogin(anonymous) {
  $("login").hidden = false;
  $("tabs").hidden = true;
  $("login-anonymous").hidden = !anonymous;
  $("login-user").focus();
}

async function login(body) {
  try {
    me = await api("POST", "/session", body);
  } catch (e) {
    $("login-error").textContent = e.status === 401 ? "Wrong user name or password." : e.message;
    return;
  }
  $("login-error").textContent = "";
  $("login").hidden = true;
  enter();
}

function enter() {
  document.body.classList.toggle("is-admin", !!me.admin);
  $("who").replaceChildren(
    el("span", { text: (me.user || "anonymous") + (me.admin ? " (admin)" : " (read only)") }),
    el("button", { type: "button", text: "Sign out", onclick: async () => {
      try { await api("DELETE", "/session"); } catch (_) { /* gone already */ }
      location.reload();
    } }),
  );
  $("tabs").hidden = false;
  show("topics");
  topics.connect();
}

// ---------------------------------------------------------------- tabs

let current = null;
const refreshers = {};

function show(name) {
  current = name;
  for (const b of document.querySelectorAll("#tabs button")) {
    if (b.dataset.tab === name) b.setAttribute("aria-current", "page");
    else b.removeAttribute("aria-current");
  }
  for (const s of document.querySelectorAll("section.tab")) s.hidden = s.id !== name;
  if (refreshers[name]) refreshers[name]();
}

setInterval(() => { if (current && current !== "topics" && refreshers[current]) refreshers[current](); }, 2000);

// ---------------------------------------------------------------- topics

const topics = {
  all: new Map(), // topic -> { value, time, count, prev, rate, retained }
  root: { name: "", path: "", children: new Map(), open: true },
  visible: [], // the rows: nodes, flattened
  dirty: true, // the rows need building again
  drawn: false,
  selected: null,
  live: [], // messages of the selected topic
  source: null,

  connect() {
    const es = new EventSource("/api/v1/subscribe?filter=%23");
    this.source = es;
    es.addEventListener("message", (ev) => this.take(JSON.parse(ev.data)));
    es.addEventListener("skipped", () => say("The page fell behind: some messages were skipped."));
    es.onerror = () => say("The stream was interrupted; reconnecting…");
    setInterval(() => this.rates(), 2000);
    this.schedule();
  },

  take(m) {
    let t = this.all.get(m.topic);
    if (!t) {
      t = { value: "", time: 0, count: 0, prev: 0, rate: 0, retained: false };
      this.all.set(m.topic, t);
      this.insert(m.topic);
    }
    t.value = m.payload !== undefined ? m.payload : "(" + Math.floor((m.payload_base64 || "").length * 3 / 4) + " bytes, binary)";
    t.time = Date.now();
    t.count += 1;
    t.retained = !!m.retain;
    if (m.topic === this.selected) {
      m.at = Date.now();
      this.live.unshift(m);
      if (this.live.length > LIVE_MAX) this.live.pop();
      detail.update();
    }
    this.schedule();
  },

  insert(topic) {
    let node = this.root;
    const levels = topic.split("/");
    for (let i = 0; i < levels.length; i++) {
      const level = levels[i];
      // By index: "/a" is not "a".
      const path = levels.slice(0, i + 1).join("/");
      let next = node.children.get(level);
      if (!next) {
        next = { name: level, path, children: new Map(), open: false };
        node.children.set(level, next);
      }
      node = next;
    }
    this.dirty = true;
  },

  rates() {
    for (const t of this.all.values()) {
      t.rate = (t.count - t.prev) / 2;
      t.prev = t.count;
    }
    this.schedule();
  },

  // Drawn at most once a frame, and only while the tab shows.
  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; if (current === "topics") this.draw(); });
  },

  build() {
    const out = [];
    const term = $("search").value.trim().toLowerCase();
    if (term) {
      for (const topic of this.all.keys()) {
        if (topic.toLowerCase().includes(term)) out.push({ name: topic, path: topic, depth: 0, leaf: true });
        if (out.length >= 5000) break;
      }
      out.sort((a, b) => collate.compare(a.path, b.path));
    } else {
      const walk = (node, depth) => {
        const kids = [...node.children.values()].sort((a, b) => collate.compare(a.name, b.name));
        for (const k of kids) {
          out.push({ name: k.name, path: k.path, depth, node: k, leaf: k.children.size === 0 });
          if (k.open) walk(k, depth + 1);
        }
      };
      walk(this.root, 0);
    }
    this.visible = out;
    this.dirty = false;
    const n = this.all.size;
    $("topic-count").textContent = n + (n === 1 ? " topic" : " topics") + (term ? ", " + out.length + " found" : "");
  },

  draw() {
    if (this.dirty) this.build();
    const tree = $("tree");
    $("tree-space").style.height = this.visible.length * ROW + "px";
    const first = Math.max(0, Math.floor(tree.scrollTop / ROW) - 5);
    const last = Math.min(this.visible.length, first + Math.ceil(tree.clientHeight / ROW) + 10);
    const rows = $("tree-rows");
    rows.style.top = first * ROW + "px";
    const frag = document.createDocumentFragment();
    for (let i = first; i < last; i++) frag.append(this.row(this.visible[i]));
    rows.replaceChildren(frag);
  },

  row(r) {
    const t = this.all.get(r.path);
    const kids = r.node ? r.node.children.size : 0;
    const attrs = {
      class: "row", role: "treeitem", "data-topic": r.path,
      "aria-level": r.depth + 1, "aria-selected": r.path === this.selected ? "true" : "false",
      style: "padding-left:" + (0.4 + r.depth * 1.1) + "rem",
      onclick: () => this.pick(r),
    };
    if (kids) attrs["aria-expanded"] = r.node.open ? "true" : "false";
    return el("div", attrs,
      el("span", { class: "twist", "aria-hidden": "true", text: kids ? (r.node.open ? "▾" : "▸") : "" }),
      el("span", { class: "name", text: r.name }),
      t && t.retained ? el("span", { class: "badge", title: "retained", text: "R" }) : null,
      el("span", { class: "value", text: t ? clip(t.value, 80) : kids + " below" }),
      t && t.rate ? el("span", { class: "rate", text: t.rate.toFixed(1) + "/s" }) : null,
    );
  },

  pick(r) {
    this.cursor = r.path;
    if (r.node && r.node.children.size) {
      r.node.open = !r.node.open;
      this.dirty = true;
    }
    if (this.all.has(r.path)) {
      this.selected = r.path;
      this.live = [];
      detail.open(r.path);
    }
    if (this.dirty) this.build();
    this.reveal(r.path);
    this.draw();
  },

  // Scrolls the tree so that the row of `path` shows.
  reveal(path) {
    const j = this.visible.findIndex((v) => v.path === path);
    const tree = $("tree");
    if (j < 0) return;
    if (j * ROW < tree.scrollTop) tree.scrollTop = j * ROW;
    else if ((j + 1) * ROW > tree.scrollTop + tree.clientHeight) tree.scrollTop = (j + 1) * ROW - tree.clientHeight;
  },

  // Keyboard: up and down move, right and left open and close, enter picks.
  key(ev) {
    const i = this.visible.findIndex((r) => r.path === this.cursor);
    let j = i;
    if (ev.key === "ArrowDown") j = Math.min(this.visible.length - 1, i + 1);
    else if (ev.key === "ArrowUp") j = Math.max(0, i - 1);
    else if (ev.key === "ArrowRight" || ev.key === "ArrowLeft") {
      const r = this.visible[i];
      if (r && r.node) { r.node.open = ev.key === "ArrowRight"; this.dirty = true; this.draw(); }
      ev.preventDefault();
      return;
    } else if (ev.key === "Enter" && i >= 0) { this.pick(this.visible[i]); return; }
    else return;
    ev.preventDefault();
    const r = this.visible[j];
    if (!r) return;
    this.cursor = r.path;
    this.selected = r.path;
    this.reveal(r.path);
    if (this.all.has(r.path)) { this.live = []; detail.open(r.path); }
    this.draw();
  },
};

// ---------------------------------------------------------------- a topic

const RANGES = { "1h": ["1h", "1m"], "24h": ["24h", "15m"], "7d": ["7d", "1h"] };

const detail = {
  topic: null,
  chart: null,

  open(topic) {
    this.topic = topic;
    const range = el("select", { id: "range", onchange: () => this.history() },
      ...Object.keys(RANGES).map((k) => el("option", { value: k, text: "last " + k })));
    $("detail").replaceChildren(
      el("h2", { text: topic }),
      el("div", { id: "last" }),
      el("h3", { text: "History" }),
      el("label", { for: "range", text: "Range" }), range,
      el("div", { id: "chart", class: "chart" }),
      el("h3", { text: "Live" }),
      el("ul", { id: "live", class: "live", "aria-live": "off" }),
      this.form(topic),
    );
    this.update();
    this.history();
  },

  update() {
    if (!this.topic || !$("last")) return;
    const t = topics.all.get(this.topic);
    if (!t) return;
    $("last").replaceChildren(
      el("pre", { id: "last-value", text: t.value }),
      el("p", { class: "muted", text: (t.retained ? "retained · " : "") + "updated " + ago(t.time) }),
    );
    $("live").replaceChildren(...topics.live.map((m) =>
      el("li", { text: new Date(m.at).toLocaleTimeString() + "  " + (m.payload !== undefined ? m.payload : "(binary)") })));
  },

  async history() {
    const [from, step] = RANGES[$("range").value];
    const box = $("chart");
    let data;
    try {
      data = await api("GET", "/history/" + topicPath(this.topic) + "?from=" + from + "&step=" + step + "&agg=min,max,avg,count");
    } catch (e) {
      box.replaceChildren(el("p", { class: "muted", text: e.status === 400 || e.status === 404
        ? "Not recorded: add a [[history]] rule for this topic to see its history."
        : "History: " + e.message }));
      return;
    }
    const buckets = (data.buckets || []).filter((b) => b.count > 0);
    if (!buckets.length) {
      box.replaceChildren(el("p", { class: "muted", text: "No numbers recorded in this range." }));
      return;
    }
    const xs = buckets.map((b) => b.start / 1000);
    const series = [xs, buckets.map((b) => b.min), buckets.map((b) => b.avg), buckets.map((b) => b.max)];
    if (this.chart) this.chart.destroy();
    box.replaceChildren();
    const width = Math.max(280, box.clientWidth || 400);
    const span = [data.from / 1000, data.to / 1000];
    this.chart = new uPlot({
      width, height: 220,
      scales: { x: { time: true, range: () => span } },
      series: [{}, { label: "min", stroke: "#0b57d0" }, { label: "avg", stroke: "#146c2e", width: 2 }, { label: "max", stroke: "#b3261e" }],
      bands: [{ series: [3, 1], fill: "rgba(11,87,208,0.12)" }],
      axes: [{}, {}],
    }, series, box);
    box.setAttribute("aria-label", "History of " + this.topic + ": " + buckets.length + " buckets");
    box.dataset.buckets = String(buckets.length);
  },

  form(topic) {
    const f = el("form", { id: "publish-form", class: "admin", onsubmit: async (ev) => {
      ev.preventDefault();
      const qos = $("pub-qos").value;
      const retain = $("pub-retain").checked;
      try {
        const r = await fetch("/api/v1/publish/" + topicPath(topic) + "?qos=" + qos + "&retain=" + retain, {
          method: "POST", credentials: "same-origin",
          headers: { "x-csrf-token": me.csrf, "content-type": "text/plain" }, body: $("pub-payload").value,
        });
        say(r.ok ? "Published." : "Refused: " + (await r.text()));
      } catch (e) { say("Not published: " + e.message); }
    } },
    el("h3", { text: "Publish" }),
    el("label", { for: "pub-payload", text: "Payload" }), el("textarea", { id: "pub-payload", rows: "3", cols: "40" }),
    el("label", { for: "pub-qos", text: "QoS" }),
    el("select", { id: "pub-qos" }, el("option", { value: "0", text: "0" }), el("option", { value: "1", text: "1", selected: true }), el("option", { value: "2", text: "2" })),
    el("label", { for: "pub-retain" }, el("input", { id: "pub-retain", type: "checkbox" }), " retained"),
    el("button", { type: "submit", text: "Publish" }));
    return f;
  },
};

// ---------------------------------------------------------------- webhooks

refreshers.webhooks = async () => {
  let data;
  try { data = await api("GET", "/webhooks"); } catch (e) {
    $("webhook-rows").replaceChildren(el("tr", {}, el("td", { colspan: "9", text: e.status === 403 ? "Webhooks are for admins." : e.message })));
    return;
  }
  $("webhook-rows").replaceChildren(...data.webhooks.map((w) => el("tr", { "data-webhook": w.name },
    el("td", { text: w.name }), el("td", { text: w.filter || "(rules only)" }), el("td", { text: w.url }),
    el("td", { class: "state", text: w.paused ? "paused" : w.retrying ? "retrying" : "delivering" }),
    el("td", { class: "num delivered", text: String(w.delivered) }), el("td", { class: "num", text: String(w.failed) }),
    el("td", { class: "num outbox", text: String(w.outbox) }), el("td", { text: w.last_error || "" }),
    el("td", { class: "admin" },
      el("button", { type: "button", class: "pause", text: w.paused ? "Resume" : "Pause",
        onclick: () => act("PATCH", "/webhooks/" + encodeURIComponent(w.name), { paused: !w.paused }, refreshers.webhooks) }),
      " ",
      w.source === "api" ? el("button", { type: "button", text: "Remove",
        onclick: () => act("DELETE", "/webhooks/" + encodeURIComponent(w.name), undefined, refreshers.webhooks) }) : null),
  )));
};

async function act(method, path, body, then) {
  try { await api(method, path, body); say("Done."); } catch (e) { say("Refused: " + e.message); }
  if (then) then();
}

// ---------------------------------------------------------------- rules

refreshers.rules = async () => {
  let data;
  try { data = await api("GET", "/rules"); } catch (e) {
    $("rule-rows").replaceChildren(el("tr", {}, el("td", { colspan: "6", text: e.status === 404 ? "No rules are loaded." : e.message })));
    return;
  }
  $("rules-file").textContent = data.file;
  $("rule-rows").replaceChildren(...data.rules.map((r) => el("tr", { "data-rule": r.name },
    el("td", {}, me.admin
      ? el("input", { type: "checkbox", class: "toggle", "aria-label": "Rule " + r.name + " on", checked: r.enabled,
          onchange: (ev) => act("PATCH", "/rules/" + encodeURIComponent(r.name), { enabled: ev.target.checked }, refreshers.rules) })
      : el("span", { text: r.enabled ? "on" : "off" })),
    el("td", {}, el("strong", { text: r.name }), el("div", { class: "muted", text: r.origin })),
    el("td", { class: "num", text: String(r.stats.fires) }),
    el("td", { text: ago(r.stats.last_fired) }),
    el("td", { text: r.stats.errors ? r.stats.errors + ": " + (r.stats.last_error || "") : "" }),
    el("td", { text: [...(r.pending || []), r.running ? r.running + " running" : ""].filter(Boolean).join("; ") }),
  )));
};

// ---------------------------------------------------------------- clients

refreshers.clients = async () => {
  let data;
  try { data = await api("GET", "/clients"); } catch (e) {
    $("client-rows").replaceChildren(el("tr", {}, el("td", { colspan: "7", text: e.status === 403 ? "Clients are for admins." : e.message })));
    return;
  }
  $("client-rows").replaceChildren(...data.clients.map((c) => el("tr", { "data-client": c.client_id },
    el("td", { text: c.client_id }), el("td", { text: c.username || "" }),
    el("td", { text: c.connected ? "connected" : "offline " + (c.offline_for_s || 0) + " s" }),
    el("td", { text: c.subscriptions.map((s) => s.filter).join(", ") }),
    el("td", { class: "num", text: String(c.queued) }), el("td", { class: "num", text: String(c.inflight) }),
    el("td", { class: "admin" }, c.connected ? el("button", { type: "button", text: "Kick",
      onclick: () => act("DELETE", "/clients/" + encodeURIComponent(c.client_id), undefined, refreshers.clients) }) : null),
  )));
};

// ---------------------------------------------------------------- health

const health = { points: [], charts: null };
const HEALTH = [
  ["Connections", (s) => s.clients_connected],
  ["Messages in per second", (s, p) => p ? (s.messages_received - p.messages_received) / ((s.t - p.t) || 1) : 0],
  ["Memory (MB)", (s) => s.memory_bytes / 1048576],
  ["Store (MB)", (s) => s.store_bytes / 1048576],
];

refreshers.health = async () => {
  let s;
  try { s = await api("GET", "/stats"); } catch (e) {
    $("health-charts").replaceChildren(el("p", { text: e.status === 403 ? "Health is for admins." : e.message }));
    health.charts = null;
    return;
  }
  s.t = Date.now() / 1000;
  health.points.push(s);
  if (health.points.length > 150) health.points.shift();
  const xs = health.points.map((p) => p.t);
  if (!health.charts) {
    $("health-charts").replaceChildren();
    health.charts = HEALTH.map(([title]) => {
      const box = el("div", { class: "chart" }, el("h3", { text: title }));
      $("health-charts").append(box);
      return new uPlot({ width: 300, height: 140, legend: { show: false },
        series: [{}, { stroke: "#0b57d0", width: 2 }] }, [[], []], box);
    });
  }
  HEALTH.forEach(([, f], i) => {
    const ys = health.points.map((p, j) => f(p, health.points[j - 1]));
    health.charts[i].setData([xs, ys]);
  });
};

// ---------------------------------------------------------------- wiring

document.addEventListener("DOMContentLoaded", () => {
  for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => show(b.dataset.tab));
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    login({ username: $("login-user").value, password: $("login-password").value });
  });
  $("login-anonymous").addEventListener("click", () => login({}));
  $("search").addEventListener("input", () => { topics.dirty = true; topics.draw(); });
  $("tree").addEventListener("scroll", () => topics.draw());
  $("tree").addEventListener("keydown", (ev) => topics.key(ev));
  $("webhook-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      await api("POST", "/webhooks", { name: $("wh-name").value, filter: $("wh-filter").value, url: $("wh-url").value });
      $("webhook-error").textContent = "";
      ev.target.reset();
    } catch (e) { $("webhook-error").textContent = e.message; }
    refreshers.webhooks();
  });
  $("rules-reload").addEventListener("click", async () => {
    try {
      const r = await api("POST", "/rules/reload");
      $("rules-error").textContent = "";
      say("Reloaded: " + r.loaded + " rules.");
    } catch (e) { $("rules-error").textContent = e.message; }
    refreshers.rules();
  });
  start();
});
