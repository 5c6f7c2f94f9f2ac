// One job: its status, steps (status, exit code, duration), cancel for roles that may, and its log followed live.

import { get, path, post } from "./api.js";
import { confirmed } from "./confirm.js";
import { badge, debounce, duration, elapsed, h, replace, when } from "./dom.js";
import { LogView } from "./logview.js";
import { may } from "./permissions.js";

const OPEN = new Set(["queued", "running"]);

function stepsTable(steps) {
  return h("table", { class: "steps", id: "steps" },
    h("thead", {}, h("tr", {}, h("th", {}, "Step"), h("th", {}, "Status"), h("th", { class: "num" }, "Exit code"), h("th", { class: "num" }, "Duration"))),
    h("tbody", {}, steps.map((step) => h("tr", { dataset: { step: step.name } },
      h("td", {}, step.name), h("td", { class: "status" }, badge(step.status)),
      h("td", { class: "num" }, step.exit_code ?? "–"), h("td", { class: "num" }, duration(elapsed(step)))))));
}

export function mount(main, { live, role, params, signedOut }) {
  const [runnerId, jobId] = params;
  const base = `/runners/${path(runnerId)}/jobs/${path(jobId)}`;
  const header = h("div", {}, h("p", { class: "muted" }, "Loading job…"));
  const notice = h("div");
  const stepsBox = h("div");
  const log = new LogView(runnerId, jobId, { onEntries: () => refreshSoon(), onSignedOut: signedOut });
  replace(main, header, notice, h("h2", {}, "Steps"), stepsBox, h("h2", {}, "Log", log.state), log.element);

  async function cancel(job) {
    await confirmed(notice, `Cancel job ${job.name}? Its running step is stopped.`, "Cancel job", () => post(`${base}/cancel`));
    refresh();
  }

  async function load() {
    const job = await get(base);
    const canCancel = may(role, "cancel") && OPEN.has(job.status);
    replace(header,
      h("h1", {}, `Job ${job.name} `, h("span", { class: "status", id: "job-status" }, badge(job.status))),
      canCancel ? h("div", { class: "actions" }, h("button", { type: "button", class: "danger cancel", id: "cancel-job", onclick: () => cancel(job) }, "Cancel job")) : null,
      h("div", { class: "panel" }, h("dl", { class: "facts" },
        h("dt", {}, "Id"), h("dd", {}, job.job_id),
        h("dt", {}, "Runner"), h("dd", {}, h("a", { href: `#/runners/${encodeURIComponent(runnerId)}` }, runnerId)),
        h("dt", {}, "Created"), h("dd", {}, when(job.created_at)),
        h("dt", {}, "Started"), h("dd", {}, when(job.started_at)),
        h("dt", {}, "Duration"), h("dd", {}, duration(elapsed(job))),
        h("dt", {}, "Exit code"), h("dd", {}, job.exit_code ?? "–"),
        job.reason ? [h("dt", {}, "Reason"), h("dd", {}, job.reason)] : null,
        job.attempt > 1 ? [h("dt", {}, "Attempt"), h("dd", {}, String(job.attempt))] : null)));
    replace(stepsBox, stepsTable(job.steps));
  }
  function refresh() {
    load().catch((e) => replace(header, h("p", { class: "error" }, e.message)));
  }
  const refreshSoon = debounce(refresh, 250);
  refresh();
  log.start();

  const unsubscribe = live.subscribe((event) => {
    if (event.type !== "job_status_change" || event.job_id !== jobId) return;
    const cell = header.querySelector("#job-status");
    if (cell) replace(cell, badge(event.new_status));
    refreshSoon();
  });
  const unReconnect = live.onReconnect(refresh);
  return () => { unsubscribe(); unReconnect(); refreshSoon.cancel(); log.close(); };
}
