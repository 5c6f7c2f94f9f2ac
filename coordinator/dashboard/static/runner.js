// One runner: its registration and latest heartbeat, health checks, 24 hours of CPU and memory, its jobs,
// and (for roles that may) stop, start and restart.

import { get, path, post } from "./api.js";
import { metricsChart } from "./chart.js";
import { confirmed } from "./confirm.js";
import { badge, debounce, h, percent, replace, when } from "./dom.js";
import { JobList } from "./overview.js";
import { may } from "./permissions.js";

const DAY_MS = 24 * 3600 * 1000;
const CONTROLS = [
  { action: "stop", label: "Stop", shown: (s) => s !== "stopped", ask: "Stop runner {name}? It finishes its running jobs first and takes no new ones." },
  { action: "start", label: "Start", shown: (s) => s === "stopped", ask: "Start runner {name} again?" },
  { action: "restart", label: "Restart", shown: (s) => s !== "stopped", ask: "Restart runner {name}? Its running jobs finish first." },
];

function facts(pairs) {
  return h("dl", { class: "facts" }, pairs.flatMap(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]));
}

function checkDetails(check) {
  return Object.entries(check).filter(([key]) => key !== "status").map(([key, value]) => `${key}: ${value}`).join(", ");
}

function healthTable(health) {
  return h("div", { id: "health" },
    h("p", {}, "Overall: ", badge(health.health), h("span", { class: "muted" }, `  checked ${when(health.last_check)}`)),
    h("table", { class: "checks" },
      h("thead", {}, h("tr", {}, h("th", {}, "Check"), h("th", {}, "Status"), h("th", {}, "Details"))),
      h("tbody", {}, Object.entries(health.checks).map(([name, check]) =>
        h("tr", { dataset: { check: name } }, h("td", {}, name), h("td", {}, badge(check.status)), h("td", { class: "muted" }, checkDetails(check)))))));
}

function metricsBlock(metrics) {
  const end = Date.now();
  const s = metrics.summary;
  return h("div", { id: "metrics" },
    h("p", { class: "legend" }, h("span", { class: "cpu" }, "■ CPU"), h("span", { class: "memory" }, "■ Memory"),
      h("span", { class: "muted" }, `avg CPU ${percent(s.avg_cpu_usage)}, max ${percent(s.max_cpu_usage)}; avg memory ${percent(s.avg_memory_usage)}, max ${percent(s.max_memory_usage)}; ${s.total_jobs_executed ?? 0} jobs`)),
    metricsChart(metrics.metrics, ["cpu_usage", "memory_usage"], { start: end - DAY_MS, end }));
}

export function mount(main, { live, role, params }) {
  const runnerId = params[0];
  const base = `/runners/${path(runnerId)}`;
  const header = h("div", {}, h("p", { class: "muted" }, "Loading runner…"));
  const notice = h("div");
  const healthBox = h("div", {}, h("p", { class: "muted" }, "Asking the agent…"));
  const metricsBox = h("div", {}, h("p", { class: "muted" }, "Loading metrics…"));
  const jobsBox = h("div");
  const jobs = new JobList(jobsBox, { showRunner: false });
  replace(main, header, notice, h("h2", {}, "Health"), healthBox, h("h2", {}, "CPU and memory, last 24 hours"), metricsBox,
    h("h2", {}, "Jobs"), jobsBox);

  async function control(spec, runner) {
    await confirmed(notice, spec.ask.replace("{name}", runner.name), spec.label,
      () => post(`${base}/${spec.action}`, spec.action === "start" ? undefined : {}));
    refresh();
  }

  async function loadRunner() {
    const runner = await get(base);
    const load = runner.current_load ?? {};
    const buttons = CONTROLS.filter((c) => may(role, c.action) && c.shown(runner.status))
      .map((c) => h("button", { type: "button", class: `control ${c.action}`, dataset: { action: c.action }, onclick: () => control(c, runner) }, c.label));
    replace(header,
      h("h1", {}, `Runner ${runner.name} `, h("span", { class: "status", id: "runner-status" }, badge(runner.status))),
      buttons.length ? h("div", { class: "actions" }, buttons) : null,
      h("div", { class: "panel" }, facts([
        ["Id", runner.id], ["Type", runner.type], ["Host", `${runner.host}:${runner.port}`],
        ["Tags", (runner.tags ?? []).map((t) => h("span", { class: "tag" }, t))],
        ["Capabilities", (runner.capabilities ?? []).join(", ") || "–"],
        ["Running / queued", `${load.active_jobs ?? 0} / ${load.queued_jobs ?? 0}`],
        ["CPU", percent(load.cpu_usage)], ["Memory", percent(load.memory_usage)], ["Disk", percent(load.disk_usage)],
        ["Last seen", when(runner.metadata?.last_seen)],
        ["Jobs run", runner.statistics ? `${runner.statistics.total_jobs_executed} (${runner.statistics.successful_jobs} ok, ${runner.statistics.failed_jobs} failed)` : "–"],
      ])));
  }

  async function loadRest() {
    const [health, metrics, list] = await Promise.allSettled([
      get(`${base}/health`), get(`${base}/metrics?period=24h`), get(`${base}/jobs?limit=30`),
    ]);
    replace(healthBox, health.status === "fulfilled" ? healthTable(health.value) : h("p", { class: "error" }, health.reason.message));
    replace(metricsBox, metrics.status === "fulfilled" ? metricsBlock(metrics.value) : h("p", { class: "error" }, metrics.reason.message));
    if (list.status === "fulfilled") jobs.set(list.value.jobs.map((job) => ({ ...job, runner_id: runnerId })));
  }

  function refresh() {
    loadRunner().catch((e) => replace(header, h("p", { class: "error" }, e.message)));
  }
  const refreshSoon = debounce(refresh, 300);
  refresh();
  loadRest().catch(() => {});

  const unsubscribe = live.subscribe((event) => {
    if (event.runner_id !== runnerId) return;
    if (event.type === "runner_status_change") {
      const cell = header.querySelector("#runner-status");
      if (cell) replace(cell, badge(event.new_status));
      refreshSoon();
    } else if (event.type === "job_status_change") {
      jobs.changed(event).catch(() => {});
      refreshSoon();
    } else {
      refreshSoon();
    }
  });
  const unReconnect = live.onReconnect(() => { refresh(); loadRest().catch(() => {}); });
  return () => { unsubscribe(); unReconnect(); refreshSoon.cancel(); };
}
