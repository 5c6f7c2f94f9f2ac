// A job's log, followed live: the last page first, then Server-Sent Events from the entry after it.
//
// The stream is read with fetch (not EventSource) so that every reconnect, after a drop or an error answer,
// sends Last-Event-ID with the last entry shown: the server resumes right after it, no gap, no duplicate.
// Lines are rendered in batches, one per animation frame; at most MAX_LINES stay in the DOM, and the oldest
// ones leave it as new ones come, with a "Load earlier lines" control that reads them back page by page.

import { ApiError, get, path } from "./api.js";
import { h } from "./dom.js";

const PAGE = 500;
const MAX_LINES = 2000;
const MAX_BACKOFF_MS = 5000;

export class LogView {
  constructor(runnerId, jobId, { onEntries = () => {}, onSignedOut = () => {} } = {}) {
    this.runnerId = runnerId;
    this.jobId = jobId;
    this.onEntries = onEntries;
    this.onSignedOut = onSignedOut;
    this.lastSeq = null;   // the newest entry received: where a reconnect resumes
    this.pending = [];
    this.frame = null;
    this.controller = null;
    this.closed = false;
    this.backoff = 250;
    this.reconnects = 0;
    this.lines = h("div", { class: "lines" });
    this.more = h("div", { class: "more", hidden: true },
      h("button", { type: "button", class: "load-earlier", onclick: () => this.loadEarlier() }, "Load earlier lines"));
    this.state = h("span", { class: "log-state" });
    this.element = h("div", { class: "log", id: "log" }, this.more, this.lines);
  }

  async start() {
    const base = `/runners/${path(this.runnerId)}/logs?job_id=${encodeURIComponent(this.jobId)}`;
    this.base = base;
    try {
      const page = await get(`${base}&limit=${PAGE}`);
      this.render(page.logs, { prepend: false });
      this.more.hidden = !page.has_more;
      if (page.logs.length) this.lastSeq = page.logs[page.logs.length - 1].seq;
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) return this.onSignedOut(e);
      this.state.textContent = `could not read the log: ${e.message}`;
    }
    this.follow();
  }

  close() {
    this.closed = true;
    if (this.controller) this.controller.abort();
    if (this.frame !== null) cancelAnimationFrame(this.frame);
  }

  // --- following ------------------------------------------------------------------------------------------

  async follow() {
    while (!this.closed) {
      this.controller = new AbortController();
      const headers = { Accept: "text/event-stream" };
      headers["Last-Event-ID"] = String(this.lastSeq ?? 0);
      let retry = true;
      try {
        const response = await fetch(`/api${this.base}&follow=true`, {
          headers, credentials: "same-origin", cache: "no-store", signal: this.controller.signal,
        });
        if (response.status === 401) {
          retry = false;
          this.onSignedOut(new ApiError(401, "AUTHENTICATION_REQUIRED", "The session has ended"));
        } else if (response.ok) {
          this.state.textContent = "following";
          this.backoff = 250;
          await this.read(response.body);
        } else {
          this.state.textContent = `log stream refused (${response.status}); retrying`;
        }
      } catch (e) {
        if (this.closed) return;
      }
      if (!retry || this.closed) return;
      this.reconnects += 1;
      this.element.dataset.reconnects = String(this.reconnects);
      this.state.textContent = "reconnecting…";
      await new Promise((resolve) => setTimeout(resolve, this.backoff));
      this.backoff = Math.min(this.backoff * 2, MAX_BACKOFF_MS);
    }
  }

  // One response's events until it ends: `id:`, `event:` and `data:` fields, an event per blank line.
  async read(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let event = { data: [] };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let newline;
      while ((newline = buffer.search(/\r?\n/)) >= 0) {
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + (buffer[newline] === "\r" ? 2 : 1));
        if (line === "") {
          if (event.data.length && (event.event ?? "message") === "log") this.receive(event.data.join("\n"));
          event = { data: [] };
          continue;
        }
        if (line.startsWith(":")) continue;  // keep-alive comment
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "data") event.data.push(text);
        else if (field === "event") event.event = text;
        else if (field === "id") event.id = text;
      }
    }
  }

  receive(data) {
    let entry;
    try { entry = JSON.parse(data); } catch { return; }
    if (this.lastSeq !== null && entry.seq <= this.lastSeq) return;
    this.lastSeq = entry.seq;
    this.pending.push(entry);
    if (this.frame === null) this.frame = requestAnimationFrame(() => this.flush());
  }

  flush() {
    this.frame = null;
    const entries = this.pending;
    this.pending = [];
    const box = this.element;
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    this.render(entries, { prepend: false });
    this.trim();
    if (atBottom) box.scrollTop = box.scrollHeight;
    this.onEntries(entries);
  }

  // --- rendering ------------------------------------------------------------------------------------------

  render(entries, { prepend }) {
    if (!entries.length) return;
    const fragment = document.createDocumentFragment();
    for (const entry of entries) fragment.append(this.line(entry));
    if (prepend) this.lines.prepend(fragment);
    else this.lines.append(fragment);
  }

  line(entry) {
    const stream = entry.context?.stream ?? "";
    const time = entry.timestamp ? entry.timestamp.slice(11, 23) : "";
    return h("div", {
      class: `line level-${entry.level}${stream === "stderr" ? " stderr" : ""}`,
      dataset: { seq: entry.seq, ts: entry.timestamp },
    },
    h("span", { class: "ts" }, time),
    h("span", { class: "step" }, entry.context?.step ?? ""),
    h("span", { class: "stream" }, stream === "stderr" ? "err" : "out"),
    h("span", { class: "msg" }, entry.message));
  }

  trim() {
    let extra = this.lines.childElementCount - MAX_LINES;
    if (extra <= 0) return;
    while (extra-- > 0) this.lines.firstElementChild.remove();
    this.more.hidden = false;
  }

  // The page before the first line shown. Timestamps have millisecond precision and many lines share one, so
  // this reads that millisecond whole (`since` is inclusive, `until` exclusive) and keeps what precedes the
  // first line by seq, then the page of lines strictly older than it.
  async loadEarlier() {
    const first = this.lines.firstElementChild;
    if (!first) return;
    const firstSeq = Number(first.dataset.seq);
    const moment = Date.parse(first.dataset.ts);
    const iso = (ms) => encodeURIComponent(new Date(ms).toISOString());
    const [sameMoment, older] = await Promise.all([
      get(`${this.base}&since=${iso(moment)}&until=${iso(moment + 1)}&limit=10000`),
      get(`${this.base}&until=${iso(moment)}&limit=${PAGE}`),
    ]);
    const earlier = [...older.logs, ...sameMoment.logs.filter((entry) => entry.seq < firstSeq)]
      .sort((a, b) => a.seq - b.seq);
    const box = this.element;
    const fromBottom = box.scrollHeight - box.scrollTop;
    this.render(earlier, { prepend: true });
    box.scrollTop = box.scrollHeight - fromBottom;  // keep the lines being read where they were
    this.more.hidden = !older.has_more;
  }
}
