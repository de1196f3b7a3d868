// eventfold console: one page over eventfold's JSON API, served by `eventfold serve` at /console.
//
// Every figure comes from the same routes any client uses, with the signed-in API key as bearer
// token, so the server decides what the key may see (its roles, its tenant); the console only
// hides what /whoami says the key cannot open. The key is kept in sessionStorage: it is gone when
// the tab closes. Amounts are shown as the decimal strings the API returns; only the charts turn
// them into numbers, to draw them (Chart.js, vendored).

const KEY = "eventfold.apiKey";
let me = null;
let charts = [];
let leave = []; // what to stop when the page changes (live streams)

// ---- DOM helpers (text only: nothing from the API is parsed as HTML) ----

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === false || v === null || v === undefined) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const $ = (sel, root = document) => root.querySelector(sel);

function announce(text) {
  const live = $("#live");
  live.textContent = "";
  setTimeout(() => { live.textContent = text; }, 30);
}

function fmtTime(t) {
  if (!t) return "";
  return new Date(t).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z").replace(/Z$/, " UTC");
}

// An amount as the API writes money: `{amount, currency}` (or a bare decimal string).
function money(m) {
  return m && typeof m === "object" ? `${m.amount} ${m.currency}` : String(m ?? "");
}

function field(label, input) {
  const id = input.id;
  return h("div", { class: "field" }, h("label", { for: id }, label), input);
}

function table(caption, headers, rows, opts = {}) {
  return h("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": caption },
    h("table", { id: opts.id },
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, headers.map(([text, cls]) => h("th", { scope: "col", class: cls }, text)))),
      h("tbody", {}, rows.length ? rows : [h("tr", {}, h("td", { colspan: headers.length, class: "note" }, opts.empty || "Nothing to show."))])));
}

function tip(id, text) {
  return h("span", { class: "tip" },
    h("button", { type: "button", "aria-describedby": id, "aria-label": "Which clock this view uses" }, "?"),
    h("span", { role: "tooltip", id }, text));
}

function errorBox(e) {
  const msg = e.status === 403 ? `Not allowed for this key: ${e.message}` : e.message;
  return h("p", { class: "error", role: "alert" }, msg);
}

function randomKey() {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

// ---- the API ----

async function api(path, { method = "GET", body, signal } = {}) {
  const headers = {};
  const key = sessionStorage.getItem(KEY);
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    headers["Idempotency-Key"] = `console-${randomKey()}`;
  }
  const r = await fetch(path, { method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!r.ok) {
    const e = new Error((data && data.message) || `${method} ${path}: ${r.status}`);
    e.status = r.status;
    e.code = data && data.code;
    throw e;
  }
  return data;
}

const q = (params) => new URLSearchParams(Object.entries(params).filter(([, v]) => v !== "" && v !== undefined && v !== null)).toString();

// Follows server-sent events of `path` (fetch, so the bearer key goes along), calling `onEvent`
// with each event's parsed data until `signal` aborts.
async function follow(path, signal, onEvent) {
  const headers = { Accept: "text/event-stream" };
  const key = sessionStorage.getItem(KEY);
  if (key) headers.Authorization = `Bearer ${key}`;
  const r = await fetch(path, { headers, signal });
  if (!r.ok || !r.body) throw new Error(`stream ${path}: ${r.status}`);
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (data) onEvent(JSON.parse(data));
    }
  }
}

// ---- charts ----

function chart(canvas, type, labels, datasets, stacked = false) {
  if (!window.Chart) return null;
  const c = new window.Chart(canvas, {
    type,
    data: { labels, datasets },
    options: {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      scales: { x: { stacked }, y: { stacked, beginAtZero: true } },
      plugins: { legend: { display: datasets.length > 1 } },
    },
  });
  charts.push(c);
  return c;
}

function chartBox(label) {
  const canvas = h("canvas", { role: "img", "aria-label": label });
  return [h("div", { class: "chart-box" }, canvas), canvas];
}

// ---- sign in ----

async function signIn(key) {
  if (key) sessionStorage.setItem(KEY, key); else sessionStorage.removeItem(KEY);
  try {
    me = await api("/whoami");
  } catch (e) {
    sessionStorage.removeItem(KEY);
    me = null;
    throw e;
  }
  $("#sign-in").hidden = true;
  $("#nav").hidden = false;
  $("#who").hidden = false;
  $("#who-text").textContent = `${me.actor} · tenant ${me.tenant} · ${me.roles.join(", ")}`;
  for (const li of document.querySelectorAll("#nav li")) li.hidden = !me.pages.includes(li.dataset.page);
  if (!location.hash || location.hash === "#/" || !me.pages.includes(route().page)) {
    location.hash = `#/${me.pages[0] || "sales"}`;
  } else {
    render();
  }
}

function signOut() {
  sessionStorage.removeItem(KEY);
  me = null;
  stopPage();
  $("#page").hidden = true;
  $("#page").replaceChildren();
  $("#nav").hidden = true;
  $("#who").hidden = true;
  $("#sign-in").hidden = false;
  $("#api-key").value = "";
  $("#api-key").focus();
}

// ---- routing ----

function route() {
  const [path, query] = location.hash.replace(/^#\/?/, "").split("?");
  return { page: path || "", params: new URLSearchParams(query || "") };
}

function go(page, params) {
  location.hash = `#/${page}?${q(params)}`;
}

function stopPage() {
  for (const c of charts) c.destroy();
  charts = [];
  for (const stop of leave) stop();
  leave = [];
}

async function render() {
  if (!me) return;
  stopPage();
  const { page, params } = route();
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.getAttribute("href") === `#/${page}`) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const root = $("#page");
  root.hidden = false;
  if (!me.pages.includes(page)) {
    root.replaceChildren(h("section", { class: "card" }, h("h2", {}, "Not available"), h("p", {}, "This key's roles do not open this page.")));
    return;
  }
  const section = h("section", { "aria-labelledby": "page-title" });
  root.replaceChildren(section);
  try {
    await ({ sales, explain, orders, exceptions, operations })[page](section, params);
  } catch (e) {
    section.append(errorBox(e));
  }
  $("#main").focus();
}

// ---- Sales: three views side by side ----

function daysAgo(n) {
  return new Date(Date.now() - n * 86400000).toISOString().slice(0, 10);
}

async function sales(section, params) {
  const store = params.get("store") || localStorage.getItem("eventfold.store") || "";
  const from = params.get("from") || daysAgo(30);
  const to = params.get("to") || daysAgo(0);
  const form = h("form", { class: "inline card", id: "sales-form" },
    field("Store", h("input", { id: "sales-store", value: store, required: true, pattern: "[A-Za-z0-9._-]{1,100}" })),
    field("From (business date)", h("input", { id: "sales-from", type: "date", value: from })),
    field("To (business date)", h("input", { id: "sales-to", type: "date", value: to })),
    h("button", { type: "submit" }, "Show"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    localStorage.setItem("eventfold.store", $("#sales-store").value);
    go("sales", { store: $("#sales-store").value, from: $("#sales-from").value, to: $("#sales-to").value });
  });
  section.append(h("h2", { id: "page-title" }, "Sales"), form);
  if (!store) {
    section.append(h("p", { class: "note" }, "Choose a store to see its sales."));
    return;
  }
  const since = new Date(Date.now() - 14 * 86400000).toISOString().replace(/\.\d+Z$/, "Z");
  const [realtime, daily, corrections, calendar] = await Promise.all([
    api(`/sales/realtime?${q({ store, from: since })}`),
    api(`/sales/daily?${q({ store, from, to })}`),
    api(`/sales/corrections?${q({ store, from, to })}`),
    api(`/stores/${encodeURIComponent(store)}/calendar`).catch(() => null),
  ]);
  const zone = calendar ? `${calendar.time_zone}, reported at ${calendar.cutoff} after the day` : "the store's calendar";

  // Real time (ingest time).
  const [rtBox, rtCanvas] = chartBox(`Sales per hour of arrival for ${store}, last 14 days`);
  const rtView = h("article", { class: "view card", id: "view-realtime", "aria-labelledby": "rt-title" },
    h("h3", { id: "rt-title" }, "Real time (ingest time)",
      tip("tip-realtime", "Counted in the hour eventfold received each sale (ingest time, UTC), last 14 days. Never rewritten: a sale that arrives late counts in the hour it arrived, not on the day it happened.")),
    rtBox,
    table(`Hours of arrival (${realtime.length})`, [["Hour (UTC)"], ["Total", "num"], ["Orders", "num"], ["Refunds", "num"]],
      realtime.map((b) => h("tr", {}, h("td", {}, fmtTime(b.hour)), h("td", { class: "num" }, `${b.total} ${b.currency}`), h("td", { class: "num" }, b.orders), h("td", { class: "num" }, b.refunds))),
      { id: "realtime-table", empty: "Nothing arrived in the last 14 days." }));

  // Daily (event time).
  const [dBox, dCanvas] = chartBox(`Sales per business date for ${store}, on time and late`);
  const adjusted = daily.filter((d) => d.adjusted).length;
  const dailyRow = (d) => h("tr", { "data-date": d.date },
    h("td", {}, d.date, " ", d.adjusted ? h("span", { class: "badge adjusted", title: `Changed after it was reported; last change arrived ${fmtTime(d.last_adjusted_at)}` }, "adjusted") : null),
    h("td", { class: "num" }, `${d.total} ${d.currency}`),
    h("td", { class: "num" }, d.orders),
    h("td", { class: "num" }, d.late_orders ? `${d.late_total} (${d.late_orders})` : "0"),
    h("td", {}, h("a", { href: `#/explain?${q({ store, date: d.date })}`, "aria-label": `Explain ${d.date}` }, "Explain")));
  const dailyRows = daily.map(dailyRow);
  const dView = h("article", { class: "view card", id: "view-daily", "aria-labelledby": "daily-title" },
    h("h3", { id: "daily-title" }, "Daily (event time)",
      tip("tip-daily", `Counted on the business date each sale happened (its event time, in ${zone}). A sale that arrives after its day was reported is added to that day as late, and the day is badged "adjusted".`)),
    h("p", { class: "note", id: "daily-summary" }, `${daily.length} days, ${adjusted} adjusted`),
    dBox,
    table("Business dates", [["Date"], ["Total", "num"], ["Orders", "num"], ["Late (orders)", "num"], ["Explain"]], dailyRows, { id: "daily-table", empty: "No sales on these dates." }));

  // Corrections.
  const [cBox, cCanvas] = chartBox(`Corrections per business date for ${store}`);
  const cRows = corrections.map(correctionRow);
  const cView = h("article", { class: "view card", id: "view-corrections", "aria-labelledby": "corr-title" },
    h("h3", { id: "corr-title" }, "Corrections",
      tip("tip-corrections", "One notice for every change to a day that was already reported (a late sale or refund, an approved exception): the day's total before and after, why, and how late it arrived. Follows new notices live.")),
    h("p", { class: "note", id: "live-status" }, "Live: waiting for new corrections."),
    cBox,
    table("Notices", [["Date"], ["Reason"], ["Change", "num"], ["Before → after", "num"], ["Arrived"]], cRows, { id: "corrections-table", empty: "No corrections on these dates." }));

  section.append(h("div", { class: "views" }, rtView, dView, cView));

  chart(rtCanvas, "bar", realtime.map((b) => b.hour.slice(0, 13).replace("T", " ")), [{ label: "Total", data: realtime.map((b) => Number(b.total)), backgroundColor: "#0b5cad" }]);
  const dChart = chart(dCanvas, "bar", daily.map((d) => d.date), [
    { label: "On time", data: daily.map((d) => Number(d.total) - Number(d.late_total)), backgroundColor: "#0b5cad" },
    { label: "Late", data: daily.map((d) => Number(d.late_total)), backgroundColor: "#d97a00" },
  ], true);
  const byDay = new Map();
  for (const c of corrections) byDay.set(c.date, (byDay.get(c.date) || 0) + Number(c.delta));
  const cChart = chart(cCanvas, "bar", [...byDay.keys()], [{ label: "Change", data: [...byDay.values()], backgroundColor: "#d97a00" }]);

  // Live: new notices of this store, from now on.
  const abort = new AbortController();
  leave.push(() => abort.abort());
  let received = 0;
  follow(`/sales/corrections/stream?${q({ store })}`, abort.signal, (notice) => {
    received += 1;
    $("#live-status").textContent = `Live: ${received} new correction${received === 1 ? "" : "s"} received.`;
    announce(`Correction for ${notice.date}: ${notice.delta} ${notice.currency}`);
    if (notice.date >= from && notice.date <= to) {
      const tbody = $("#corrections-table tbody");
      if (tbody.querySelector("td[colspan]")) tbody.replaceChildren();
      tbody.prepend(correctionRow(notice));
      const row = document.querySelector(`#daily-table tr[data-date="${notice.date}"] td`);
      if (row && !row.querySelector(".badge")) row.append(" ", h("span", { class: "badge adjusted", title: `Changed after it was reported; last change arrived ${fmtTime(notice.ingested_at)}` }, "adjusted"));
      // The day's row as the view holds it now (its total, its late part). The notice comes
      // straight from the log and the daily view may not have counted the change yet: ask
      // again (every 250 ms, up to 5 s) until it has, and never drop the badge the notice earned.
      const refreshDay = (tries) => api(`/sales/daily?${q({ store, from: notice.date, to: notice.date })}`).then((days) => {
        if (abort.signal.aborted) return;
        const now = days.find((d) => d.currency === notice.currency);
        const counted = now && now.last_adjusted_at && Date.parse(now.last_adjusted_at) >= Date.parse(notice.ingested_at);
        if (!counted && tries > 0) {
          setTimeout(() => refreshDay(tries - 1), 250);
          return;
        }
        const old = document.querySelector(`#daily-table tr[data-date="${notice.date}"]`);
        if (old && now) old.replaceWith(dailyRow({ ...now, adjusted: true, last_adjusted_at: now.last_adjusted_at || notice.ingested_at }));
      }).catch(() => {});
      refreshDay(20);
      const days = document.querySelectorAll("#daily-table tbody tr[data-date]").length;
      const badged = document.querySelectorAll("#daily-table tbody .badge.adjusted").length;
      $("#daily-summary").textContent = `${days} days, ${badged} adjusted${row ? "" : ` · new: ${notice.date}`}`;
      // The charts follow: the change lands on its day, in the daily view as late.
      const delta = Number(notice.delta);
      if (dChart) {
        const i = dChart.data.labels.indexOf(notice.date);
        if (i >= 0) dChart.data.datasets[1].data[i] += delta;
        dChart.update();
      }
      if (cChart) {
        const i = cChart.data.labels.indexOf(notice.date);
        if (i >= 0) cChart.data.datasets[0].data[i] += delta;
        else { cChart.data.labels.push(notice.date); cChart.data.datasets[0].data.push(delta); }
        cChart.update();
      }
    }
  }).catch((e) => {
    if (!abort.signal.aborted) $("#live-status").textContent = `Live updates stopped: ${e.message}`;
  });
}

function correctionRow(c) {
  return h("tr", {},
    h("td", {}, c.date),
    h("td", {}, h("span", { class: "badge late" }, c.reason)),
    h("td", { class: "num" }, `${c.delta} ${c.currency}`),
    h("td", { class: "num" }, `${c.before} → ${c.after}`),
    h("td", {}, fmtTime(c.ingested_at), c.lateness_seconds ? ` (${lateness(c.lateness_seconds)} after the cutoff)` : ""));
}

// Seconds as the largest whole unit that reads well: `40 min`, `5 h`, `3 days`, `27 years`.
function lateness(seconds) {
  const units = [[365 * 86400, "years"], [86400, "days"], [3600, "h"], [60, "min"]];
  for (const [size, name] of units) {
    if (seconds >= 2 * size) return `${Math.floor(seconds / size)} ${name}`;
  }
  return `${seconds} s`;
}

// ---- Explain a number ----

async function explain(section, params) {
  const store = params.get("store") || localStorage.getItem("eventfold.store") || "";
  const date = params.get("date") || "";
  const version = params.get("version") || "";
  const form = h("form", { class: "inline card", id: "explain-form" },
    field("Store", h("input", { id: "explain-store", value: store, required: true })),
    field("Business date", h("input", { id: "explain-date", type: "date", value: date, required: true })),
    field("Projection version (blank: the one queries read)", h("input", { id: "explain-version", type: "number", min: "1", value: version })),
    h("button", { type: "submit" }, "Explain"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    go("explain", { store: $("#explain-store").value, date: $("#explain-date").value, version: $("#explain-version").value });
  });
  section.append(h("h2", { id: "page-title" }, "Explain a number"), form);
  if (!store || !date) {
    section.append(h("p", { class: "note" }, "Pick a store and a business date, or follow \"Explain\" from a daily total."));
    return;
  }
  const found = await api(`/sales/daily/explain?${q({ store, date, version })}`);
  if (!found.length) {
    section.append(h("p", { class: "card", id: "explain-empty" }, `No sale or refund counts on ${date} for ${store}.`));
    return;
  }
  for (const x of found) {
    const matches = x.sum === x.total;
    section.append(h("article", { class: "card explanation" },
      h("h3", {}, `${x.store} · ${x.date} · ${x.currency}`),
      h("dl", { class: "facts" },
        h("dt", {}, "Daily total"), h("dd", { id: "explain-total" }, `${x.total} ${x.currency}`),
        h("dt", {}, "Counted by"), h("dd", { id: "explain-version-text" }, `${x.projection} version ${x.version}${x.version === x.active_version ? " (the version queries read)" : ` (queries read version ${x.active_version})`}`),
        h("dt", {}, "Events that produced it"), h("dd", {}, `${x.contributions.length}, summing to ${x.sum} ${x.currency} `, h("span", { class: `badge ${matches ? "good" : "bad"}` }, matches ? "matches" : "differs: the view is behind")),
        h("dt", {}, "Log read"), h("dd", {}, `${x.events_read} events up to position ${x.through_position}`)),
      table("Events counted on this day", [["Position", "num"], ["Order"], ["Event"], ["Actor"], ["Event time"], ["Ingest time"], ["Amount", "num"], ["Late?"]],
        x.contributions.map((c) => h("tr", {},
          h("td", { class: "num" }, c.global_position),
          h("td", {}, c.order_id ? h("a", { href: `#/orders?${q({ order: c.order_id })}` }, c.order_id) : c.stream_id),
          h("td", {}, c.event_type),
          h("td", {}, c.actor),
          h("td", {}, fmtTime(c.event_time)),
          h("td", {}, fmtTime(c.ingest_time)),
          h("td", { class: "num" }, `${c.amount} ${x.currency}`),
          h("td", {}, c.late ? h("span", { class: "badge late", title: "Arrived after the day's cutoff: counted as late, the day badged adjusted" }, "late") : "on time"))),
        { id: "explain-table" })));
  }
}

// ---- Orders and accounts ----

function flatten(value, prefix = "", out = {}) {
  if (value && typeof value === "object" && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value)) flatten(v, prefix ? `${prefix}.${k}` : k, out);
  } else if (prefix) {
    out[prefix] = value === undefined ? null : JSON.stringify(value);
  }
  return out;
}

function diff(before, after) {
  const a = flatten(before || {});
  const b = flatten(after || {});
  const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])].sort();
  const rows = keys.filter((k) => a[k] !== b[k]).map((k) => h("tr", {}, h("td", {}, k), h("td", { class: "before" }, a[k] ?? "—"), h("td", { class: "after" }, b[k] ?? "—")));
  if (!rows.length) return h("p", { class: "note" }, "No change to the state.");
  return h("table", { class: "diff" }, h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Field"), h("th", { scope: "col" }, "Before"), h("th", { scope: "col" }, "After"))), h("tbody", {}, rows));
}

function timeline(entries) {
  return h("ol", { class: "timeline", id: "timeline" }, entries.map((e) => {
    const saga = e.stream_id.startsWith("paysaga-");
    return h("li", { class: saga ? "saga" : "" },
      h("div", {}, h("strong", {}, e.event_type), " ", saga ? h("span", { class: "badge saga" }, "saga step") : null,
        " by ", h("span", { class: "actor" }, e.actor)),
      h("div", { class: "when" }, `${fmtTime(e.event_time)} (recorded ${fmtTime(e.recorded_at)}) · ${e.stream_id} v${e.version} · position ${e.global_position}`),
      e.reason ? h("div", {}, "Reason: ", h("q", {}, e.reason)) : null,
      h("details", { open: !saga },
        h("summary", {}, "State before and after"),
        diff(e.state_before, e.state_after)));
  }));
}

async function orders(section, params) {
  const order = params.get("order") || "";
  const account = params.get("account") || "";
  const asOf = params.get("asOf") || "";
  const version = params.get("version") || "";
  const orderForm = h("form", { class: "inline card", id: "order-form" },
    field("Order id", h("input", { id: "order-id", value: order, required: true })),
    h("button", { type: "submit" }, "Show order"));
  orderForm.addEventListener("submit", (ev) => { ev.preventDefault(); go("orders", { order: $("#order-id").value }); });
  const accountForm = h("form", { class: "inline card", id: "account-form" },
    field("Account id", h("input", { id: "account-id", value: account, required: true })),
    field("As of (UTC)", h("input", { id: "account-asof", type: "datetime-local", step: "1", value: asOf.replace(/Z$/, "") })),
    field("Or as of version", h("input", { id: "account-version", type: "number", min: "1", value: version })),
    h("button", { type: "submit" }, "Show account"));
  accountForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = $("#account-asof").value;
    go("orders", { account: $("#account-id").value, asOf: t ? `${t.length === 16 ? `${t}:00` : t}Z` : "", version: $("#account-version").value });
  });
  section.append(h("h2", { id: "page-title" }, "Orders & accounts"), h("div", { class: "grid2" }, orderForm, accountForm));
  if (order) {
    const [summary, history] = await Promise.all([
      api(`/orders/${encodeURIComponent(order)}`),
      api(`/orders/${encodeURIComponent(order)}/history`),
    ]);
    section.append(h("article", { class: "card", id: "order-view" },
      h("h3", {}, `Order ${summary.order_id}`),
      h("dl", { class: "facts" },
        h("dt", {}, "Status"), h("dd", { id: "order-status" }, summary.status),
        h("dt", {}, "Customer"), h("dd", {}, summary.customer_id),
        h("dt", {}, "Store"), h("dd", {}, summary.store_id),
        h("dt", {}, "Total"), h("dd", {}, money(summary.total))),
      h("h3", {}, "Audit timeline"),
      timeline(history)));
  }
  if (account) {
    const [state, history] = await Promise.all([
      api(`/accounts/${encodeURIComponent(account)}?${q({ asOf, version })}`),
      api(`/accounts/${encodeURIComponent(account)}/history`),
    ]);
    section.append(h("article", { class: "card", id: "account-view" },
      h("h3", {}, `Account ${account}`, asOf ? ` as of ${fmtTime(asOf)}` : version ? ` as of version ${version}` : ""),
      h("dl", { class: "facts" },
        h("dt", {}, "Balance"), h("dd", { id: "account-balance" }, money(state.balance)),
        h("dt", {}, "Owner"), h("dd", {}, state.owner),
        h("dt", {}, "Version"), h("dd", {}, state.version)),
      h("h3", {}, "Audit timeline"),
      timeline(history)));
  }
}

// ---- Exceptions and periods ----

async function exceptions(section, params) {
  const state = params.get("state") || "open";
  const store = params.get("store") || "";
  const form = h("form", { class: "inline card", id: "exceptions-form" },
    field("State", h("select", { id: "exc-state" }, ["open", "approved", "rejected", "all"].map((s) => h("option", { value: s, selected: s === state }, s)))),
    field("Store", h("input", { id: "exc-store", value: store })),
    h("button", { type: "submit" }, "Show"));
  form.addEventListener("submit", (ev) => { ev.preventDefault(); go("exceptions", { state: $("#exc-state").value, store: $("#exc-store").value }); });
  section.append(h("h2", { id: "page-title" }, "Exceptions & periods"), form);
  const list = await api(`/exceptions?${q({ state: state === "all" ? "" : state, store })}`);
  const decide = me.may.decide_exceptions;
  const rows = list.map((x) => {
    const reasonId = `reason-${x.id}`;
    const act = async (verb) => {
      const reason = $(`#${CSS.escape(reasonId)}`).value;
      try {
        const done = await api(`/exceptions/${x.id}/${verb}`, { method: "POST", body: { reason } });
        announce(`Exception ${x.id} ${done.state}`);
        // The decision as the server answered it: the queue's read model may not show it yet.
        const row = document.querySelector(`#exceptions-table tr[data-id="${x.id}"]`);
        if (state === "open") {
          const body = row.parentElement;
          row.remove();
          if (!body.children.length) body.append(h("tr", {}, h("td", { colspan: 8, class: "note" }, "No exceptions.")));
        } else {
          row.lastElementChild.replaceChildren(`${done.state}: `, h("q", {}, done.reason));
        }
      } catch (e) {
        $(`#${CSS.escape(`err-${x.id}`)}`).textContent = e.message;
      }
    };
    const decision = x.state === "open" && decide
      ? h("form", { class: "decide", "aria-label": `Decide exception ${x.id}`, onsubmit: (ev) => { ev.preventDefault(); act(ev.submitter && ev.submitter.value === "reject" ? "reject" : "approve"); } },
        h("label", { for: reasonId, class: "visually-hidden" }, "Reason (required)"),
        h("input", { id: reasonId, placeholder: "Reason (required)", required: true, maxlength: "500" }),
        " ", h("button", { type: "submit", value: "approve" }, "Approve"),
        " ", h("button", { type: "submit", value: "reject", class: "danger" }, "Reject"),
        h("span", { class: "error", id: `err-${x.id}`, role: "alert" }))
      : x.decision_reason ? h("span", {}, `${x.state}: `, h("q", {}, x.decision_reason)) : x.state;
    return h("tr", { "data-id": x.id },
      h("td", {}, x.store), h("td", {}, x.date), h("td", {}, x.period),
      h("td", { class: "num" }, `${x.amount} ${x.currency}`), h("td", {}, x.kind), h("td", {}, x.hold),
      h("td", {}, fmtTime(x.ingested_at)), h("td", {}, decision));
  });
  section.append(h("article", { class: "card" },
    h("h3", {}, "Exception queue"),
    decide ? null : h("p", { class: "note" }, "Only finance may approve or reject."),
    table(`${state} exceptions (${list.length})`, [["Store"], ["Date"], ["Period"], ["Amount", "num"], ["Kind"], ["Held because"], ["Arrived"], ["Decision"]], rows, { id: "exceptions-table", empty: "No exceptions." })));
  if (store) {
    try {
      const periods = await api(`/stores/${encodeURIComponent(store)}/periods`);
      section.append(h("article", { class: "card" },
        h("h3", {}, `Periods of ${store} (by ${periods.length}, from ${periods.from})`),
        table("Periods", [["Period"], ["State"], ["Soft-closes"], ["Closes"], ["Sealed totals"]],
          periods.periods.map((p) => h("tr", {}, h("td", {}, p.period), h("td", {}, p.state, p.reopened ? " (reopened)" : ""), h("td", {}, fmtTime(p.soft_closes_at)), h("td", {}, fmtTime(p.closes_at)),
            h("td", {}, p.seal ? p.seal.totals.map((t) => `${t.total} ${t.currency}`).join(", ") : ""))),
          { id: "periods-table" })));
    } catch (e) {
      section.append(h("article", { class: "card" }, h("h3", {}, `Periods of ${store}`), e.status === 404 ? h("p", { class: "note" }, "Period control is not on for this store.") : errorBox(e)));
    }
  }
}

// ---- Operations ----

async function operations(section) {
  section.append(h("h2", { id: "page-title" }, "Operations"));
  const [ops, versions] = await Promise.all([api("/operations"), api("/projections")]);
  const ready = ops.readiness;
  section.append(h("article", { class: "card", id: "health" },
    h("h3", {}, "Health ", h("span", { class: `badge ${ready.status === "ready" ? "good" : "bad"}` }, ready.status)),
    table("Dependencies", [["Check"], ["State"], ["Detail"]],
      ready.checks.map((c) => h("tr", {}, h("td", {}, c.name), h("td", {}, h("span", { class: `badge ${c.ready ? "good" : "bad"}` }, c.ready ? "ready" : "not ready")), h("td", {}, c.detail))))));

  const switchable = me.may.switch_versions;
  const vRows = versions.map((v) => {
    const actions = [];
    if (switchable && !v.active) {
      const rid = `activate-${v.name}-${v.version}`;
      actions.push(h("form", { class: "inline", onsubmit: async (ev) => {
        ev.preventDefault();
        try {
          await api(`/projections/${v.name}/activate`, { method: "POST", body: { version: v.version, reason: $(`#${rid}`).value, force: $(`#${rid}-force`).checked } });
          announce(`${v.name} now serves version ${v.version}`);
          render();
        } catch (e) { $(`#${rid}-err`).textContent = e.message; }
      } },
      h("label", { for: rid, class: "visually-hidden" }, `Reason to switch ${v.name} to version ${v.version}`),
      h("input", { id: rid, placeholder: "Reason (required)", required: true }),
      h("label", {}, h("input", { type: "checkbox", id: `${rid}-force` }), " force"),
      h("button", { type: "submit" }, `Switch to v${v.version}`),
      h("span", { class: "error", id: `${rid}-err`, role: "alert" })));
    }
    if (switchable) {
      const bid = `rebuild-${v.name}-${v.version}`;
      actions.push(h("form", { class: "inline", onsubmit: async (ev) => {
        ev.preventDefault();
        try {
          const r = await api(`/projections/${v.name}/rebuild`, { method: "POST", body: { version: v.version, reason: $(`#${bid}`).value } });
          announce(`Rebuilding ${v.name} version ${v.version}: ${r.state}`);
          $(`#${bid}-err`).textContent = `Rebuild ${r.state}.`;
        } catch (e) { $(`#${bid}-err`).textContent = e.message; }
      } },
      h("label", { for: bid, class: "visually-hidden" }, `Reason to rebuild ${v.name} version ${v.version}`),
      h("input", { id: bid, placeholder: "Reason (required)", required: true }),
      h("button", { type: "submit", class: "secondary" }, "Rebuild"),
      h("span", { class: "note", id: `${bid}-err`, role: "status" })));
    }
    return h("tr", { "data-projection": `${v.name}@${v.version}` },
      h("td", {}, v.name), h("td", { class: "num" }, v.version),
      h("td", {}, v.active ? h("span", { class: "badge good" }, "active") : "candidate"),
      h("td", { class: "num" }, v.checkpoint), h("td", { class: "num" }, v.lag_events),
      h("td", { class: "num" }, v.lag_seconds.toFixed(1)),
      h("td", {}, actions));
  });
  section.append(h("article", { class: "card", id: "projections" },
    h("h3", {}, "Projections"),
    switchable ? null : h("p", { class: "note" }, "Only an operator of the default tenant may switch or rebuild versions."),
    table("Projection versions", [["Name"], ["Version", "num"], ["Serving"], ["Checkpoint", "num"], ["Lag (events)", "num"], ["Lag (s)", "num"], ["Actions"]], vRows, { id: "projections-table" })));

  const relay = ops.relay;
  section.append(h("div", { class: "grid2" },
    h("article", { class: "card", id: "messaging" },
      h("h3", {}, "Relay and consumers"),
      h("p", {}, relay ? `Outbox relay: ${relay.backlog_events} events not yet published (log head ${ops.head_position}).` : "No broker configured: the relay does not run in this server."),
      table("Consumer lag per partition", [["Group"], ["Topic"], ["Partition", "num"], ["Lag", "num"]],
        ops.consumer_lag.map((l) => h("tr", {}, h("td", {}, l.group), h("td", {}, l.topic), h("td", { class: "num" }, l.partition), h("td", { class: "num" }, l.lag))),
        { id: "lag-table", empty: relay ? "No watched group has committed offsets yet." : "Measured at the broker when one is configured." }),
      table("Dead-letter topics", [["Topic"], ["Messages", "num"]],
        ops.dead_letters.map((d) => h("tr", {}, h("td", {}, d.topic), h("td", { class: "num" }, d.messages))), { empty: "None seen." })),
    h("article", { class: "card", id: "sagas" },
      h("h3", {}, "Sagas"),
      h("p", {}, `${ops.sagas.in_flight} payment sagas in flight, `, h("strong", { id: "sagas-stuck" }, `${ops.sagas.stuck} stuck`), " (no step for 5 minutes)."),
      ops.sagas.stuck_orders.length ? h("ul", {}, ops.sagas.stuck_orders.map((o) => h("li", {}, h("a", { href: `#/orders?${q({ order: o })}` }, o)))) : null)));

  const chain = ops.chain;
  const result = h("div", { id: "chain-result" }, chainText(chain));
  const verify = me.may.verify_chain ? h("button", { type: "button", id: "verify-now", onclick: async (ev) => {
    ev.target.disabled = true;
    result.replaceChildren(h("p", {}, "Walking the chain…"));
    try {
      const done = await api("/chain/verify", { method: "POST", body: {} });
      result.replaceChildren(chainText(done));
      announce(done.ok ? "The hash chain holds" : "The hash chain is broken");
    } catch (e) { result.replaceChildren(errorBox(e)); }
    ev.target.disabled = false;
  } }, "Verify now") : null;
  section.append(h("article", { class: "card", id: "chain" }, h("h3", {}, "Hash chain"), result, verify,
    h("p", { class: "note" }, "Sign an anchor of the log's head with eventfold anchor sign; give it to serve with --anchor to check every walk against it.")));
}

function chainText(c) {
  if (!c) return h("p", {}, "Not walked since this server started.");
  return h("p", {},
    h("span", { class: `badge ${c.ok ? "good" : "bad"}` }, c.ok ? "intact" : "broken"),
    ` ${c.events_checked} events checked up to position ${c.head_position ?? 0}, finished ${fmtTime(c.finished_at)} (${Math.round(c.elapsed_ms)} ms).`,
    c.first_broken ? h("strong", {}, ` ${c.first_broken}`) : null,
    h("br"),
    c.anchor
      ? h("span", { id: "anchor-state" }, "Last signed anchor: position ", String(c.anchor.position), `, signed ${fmtTime(c.anchor.signed_at)}: `,
        h("span", { class: `badge ${c.anchor.extended ? "good" : "bad"}` }, c.anchor.extended ? "the log extends it" : "the log does not extend it"))
      : h("span", { id: "anchor-state", class: "note" }, "No signed anchor configured (serve --anchor FILE --anchor-public-key KEY)."));
}

// ---- start ----

document.addEventListener("DOMContentLoaded", async () => {
  $("#sign-in-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    $("#sign-in-error").textContent = "";
    try {
      await signIn($("#api-key").value.trim());
    } catch (e) {
      $("#sign-in-error").textContent = e.status === 401 ? "That key was not accepted." : e.message;
    }
  });
  $("#sign-out").addEventListener("click", signOut);
  window.addEventListener("hashchange", render);
  const key = sessionStorage.getItem(KEY);
  if (key) {
    try { await signIn(key); } catch { signOut(); }
  } else {
    $("#api-key").focus();
  }
});
