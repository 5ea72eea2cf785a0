// fluxhook dashboard: live updates from the event stream, with no library.
// The jobs list swaps in rows the server renders (/dashboard/jobs/ID/row) as their events
// arrive; a job page re-renders its live part (/dashboard/jobs/ID/live). The stream resumes
// from the last event the page was rendered after, so nothing between render and connect is lost.
"use strict";
(() => {
  const body = document.body;
  const base = body.dataset.base;
  const page = body.dataset.page;
  const skew = body.dataset.now ? Number(body.dataset.now) - Date.now() : 0;
  const JOB_EVENTS = ["job.submitted", "job.running", "job.progress", "job.succeeded", "job.failed", "job.cancelled"];

  function span(seconds) {
    if (seconds < 60) return `${Math.floor(seconds)} s`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)} h`;
    return `${Math.floor(seconds / 86400)} d`;
  }
  function tickAges() {
    const now = Date.now() + skew;
    for (const el of document.querySelectorAll("time[data-ms]")) {
      const seconds = (now - Number(el.dataset.ms)) / 1000;
      el.textContent = seconds < 0 ? `in ${span(-seconds)}` : `${span(seconds)} ago`;
    }
  }
  setInterval(tickAges, 1000);

  function fragment(html) {
    const template = document.createElement("template");
    template.innerHTML = html.trim();
    return template.content.firstElementChild;
  }

  // The health strip: on events, and every few seconds (deliveries and tasks make no events).
  const health = document.getElementById("health");
  let healthTimer = null;
  function refreshHealth() {
    if (!health || healthTimer) return;
    healthTimer = setTimeout(async () => {
      healthTimer = null;
      const response = await fetch(`${base}/health`, { credentials: "same-origin" });
      if (response.ok) {
        const html = await response.text();
        if (health.innerHTML.trim() !== html.trim()) health.innerHTML = html;
      }
    }, 250);
  }
  if (health) setInterval(refreshHealth, 5000);

  const live = document.getElementById("live");
  function stream(params, onEvent) {
    const query = new URLSearchParams(params);
    query.set("last_event_id", body.dataset.lastEvent || "0");
    const source = new EventSource(`${base}/events?${query}`);
    source.onopen = () => { if (live) { live.textContent = "live"; live.classList.add("on"); } };
    source.onerror = () => { if (live) { live.textContent = "reconnecting"; live.classList.remove("on"); } };
    for (const type of JOB_EVENTS) source.addEventListener(type, onEvent);
    source.addEventListener("subscription.disabled", refreshHealth);
    return source;
  }

  if (page === "jobs") {
    const rows = document.getElementById("job-rows");
    const empty = document.getElementById("no-jobs");
    const filters = new URLSearchParams();
    if (body.dataset.status) filters.set("status", body.dataset.status);
    if (body.dataset.provider) filters.set("provider", body.dataset.provider);
    const insertNew = body.dataset.liveInsert === "true";
    const waiting = new Set();
    let flushing = null;

    async function updateRow(id) {
      const response = await fetch(`${base}/jobs/${encodeURIComponent(id)}/row?${filters}`, { credentials: "same-origin" });
      const existing = document.getElementById(`job-${id}`);
      if (response.status === 204) { if (existing) existing.remove(); return; }
      if (!response.ok) return;
      const row = fragment(await response.text());
      if (existing) {
        if (existing.outerHTML === row.outerHTML) return;
        existing.replaceWith(row);
      } else if (insertNew) {
        const created = Number(row.dataset.created);
        const after = [...rows.children].find((r) => Number(r.dataset.created) < created);
        rows.insertBefore(row, after || null);
      } else {
        return;
      }
      row.classList.add("flash");
      row.addEventListener("animationend", () => row.classList.remove("flash"), { once: true });
      empty.hidden = rows.children.length > 0;
    }
    function flushSoon() {
      if (flushing) return;
      flushing = setTimeout(async () => {
        const ids = [...waiting];
        waiting.clear();
        for (const id of ids) await updateRow(id);
        flushing = null;
        if (waiting.size) flushSoon();
      }, 150);
    }
    stream({}, (event) => {
      const data = JSON.parse(event.data).data || {};
      body.dataset.lastEvent = event.lastEventId || body.dataset.lastEvent;
      if (data.id) { waiting.add(data.id); flushSoon(); }
      refreshHealth();
    });
    for (const select of document.querySelectorAll(".filters select")) {
      select.addEventListener("change", () => select.form.submit());
    }
  }

  if (page === "job") {
    const id = body.dataset.job;
    const holder = document.getElementById("job-live");
    let last = holder.innerHTML.trim();
    let busy = false;
    async function refresh() {
      if (busy) return;
      busy = true;
      try {
        const response = await fetch(`${base}/jobs/${encodeURIComponent(id)}/live`, { credentials: "same-origin" });
        if (response.ok) {
          const html = (await response.text()).trim();
          if (html !== last) { holder.innerHTML = html; last = html; tickAges(); }
        }
      } finally { busy = false; }
    }
    stream({ job_id: id }, (event) => {
      body.dataset.lastEvent = event.lastEventId || body.dataset.lastEvent;
      refresh();
      refreshHealth();
    });
    // Delivery attempts and polls make no events: look again while anything may still happen.
    setInterval(() => {
      const view = holder.querySelector(".jobview");
      if (view && view.dataset.live === "true") refresh();
    }, 1500);
  }

  if (page === "subscriptions") {
    stream({ type: "subscription.disabled" }, () => {});
  }
})();
