// The front page: every runner with its latest heartbeat, and the most recent jobs across runners.
// Status changes arrive over the WebSocket and are applied in place; heartbeat figures are re-read every
// few seconds (heartbeats are not pushed to browsers).

import { get, path } from "./api.js";
import { badge, debounce, duration, elapsed, h, percent, replace, when } from "./dom.js";

const RUNNER_PAGE = 100;
const RECENT_JOBS = 30;
const HEARTBEAT_REFRESH_MS = 5000;

export function runnerRow(runner) {
  const load = runner.current_load ?? {};
  return h("tr", { dataset: { runnerId: runner.id } },
    h("td", {}, h("a", { href: `#/runners/${encodeURIComponent(runner.id)}`, class: "runner-name" }, runner.name)),
    h("td", {}, runner.type),
    h("td", { class: "status" }, badge(runner.status)),
    h("td", {}, (runner.tags ?? []).map((tag) => h("span", { class: "tag" }, tag))),
    h("td", { class: "num" }, `${load.active_jobs ?? 0} / ${load.queued_jobs ?? 0}`),
    h("td", { class: "num" }, percent(load.cpu_usage)),
    h("td", { class: "num" }, percent(load.memory_usage)));
}

export function runnersTable(runners) {
  return h("table", { class: "runners", id: "runners" },
    h("thead", {}, h("tr", {}, ["Name", "Type", "Status", "Tags", "Running / queued", "CPU", "Memory"]
      .map((title, i) => h("th", { class: i >= 4 ? "num" : undefined }, title)))),
    h("tbody", {}, runners.length ? runners.map(runnerRow) : h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No runners registered yet"))));
}

export function jobRow(job, { showRunner = true, runnerNames = new Map() } = {}) {
  return h("tr", { dataset: { jobId: job.job_id, runnerId: job.runner_id } },
    h("td", {}, h("a", { href: `#/jobs/${encodeURIComponent(job.runner_id)}/${encodeURIComponent(job.job_id)}`, class: "job-name" }, job.name)),
    h("td", { class: "status" }, badge(job.status)),
    showRunner ? h("td", {}, h("a", { href: `#/runners/${encodeURIComponent(job.runner_id)}` }, runnerNames.get(job.runner_id) ?? job.runner_id)) : null,
    h("td", {}, when(job.created_at)),
    h("td", { class: "num" }, duration(elapsed(job))),
    h("td", { class: "num" }, job.exit_code ?? "–"));
}

export function jobsTable(jobs, options = {}) {
  const showRunner = options.showRunner ?? true;
  const titles = ["Job", "Status", showRunner ? "Runner" : null, "Created", "Duration", "Exit code"].filter(Boolean);
  return h("table", { class: "jobs", id: "jobs" },
    h("thead", {}, h("tr", {}, titles.map((title) => h("th", { class: ["Duration", "Exit code"].includes(title) ? "num" : undefined }, title)))),
    h("tbody", {}, jobs.map((job) => jobRow(job, options))));
}

// Keeps a list of jobs current from job_status_change events: known jobs re-read, new ones fetched and added.
export class JobList {
  constructor(container, options) {
    this.container = container;
    this.options = options;
    this.jobs = new Map();
  }

  set(jobs) {
    this.jobs = new Map(jobs.map((job) => [job.job_id, job]));
    this.draw();
  }

  draw() {
    const jobs = [...this.jobs.values()].sort((a, b) => b.created_at.localeCompare(a.created_at)).slice(0, RECENT_JOBS);
    replace(this.container, jobs.length ? jobsTable(jobs, this.options) : h("p", { class: "muted", id: "jobs" }, "No jobs yet"));
  }

  async changed(event) {
    const known = this.jobs.get(event.job_id);
    if (known) {
      known.status = event.new_status;
      this.draw();
    }
    const job = await get(`/runners/${path(event.runner_id)}/jobs/${path(event.job_id)}`);
    this.jobs.set(job.job_id, job);
    this.draw();
  }
}

async function recentJobs(runners) {
  const lists = await Promise.all(runners.map(async (runner) => {
    const page = await get(`/runners/${path(runner.id)}/jobs?limit=${RECENT_JOBS}`);
    return page.jobs.map((job) => ({ ...job, runner_id: runner.id }));
  }));
  return lists.flat();
}

export function mount(main, { live }) {
  const runnersBox = h("div", {}, h("p", { class: "muted" }, "Loading runners…"));
  const jobsBox = h("div", {}, h("p", { class: "muted" }, "Loading jobs…"));
  const runnerNames = new Map();
  const jobs = new JobList(jobsBox, { runnerNames });
  const total = h("span", { class: "muted" });
  replace(main, h("h1", {}, "Runners ", total), runnersBox, h("h2", {}, "Recent jobs"), jobsBox);

  let runners = [];
  async function loadRunners() {
    const page = await get(`/runners?limit=${RUNNER_PAGE}`);
    runners = page.runners;
    for (const runner of runners) runnerNames.set(runner.id, runner.name);
    total.textContent = page.has_more ? `(first ${runners.length} of ${page.total_count})` : `(${page.total_count})`;
    replace(runnersBox, runnersTable(runners));
  }
  const refreshRunners = debounce(() => loadRunners().catch(() => {}), 300);

  async function load() {
    await loadRunners();
    jobs.set(await recentJobs(runners));
  }
  load().catch((e) => replace(runnersBox, h("p", { class: "error" }, e.message)));

  const unsubscribe = live.subscribe((event) => {
    if (event.type === "runner_status_change") {
      const cell = runnersBox.querySelector(`tr[data-runner-id="${CSS.escape(event.runner_id)}"] td.status`);
      if (cell) replace(cell, badge(event.new_status));
      refreshRunners();
    } else if (event.type.startsWith("runner_")) {
      refreshRunners();
    } else if (event.type === "job_status_change") {
      jobs.changed(event).catch(() => {});
      refreshRunners();
    }
  });
  const unReconnect = live.onReconnect(() => load().catch(() => {}));
  const timer = setInterval(refreshRunners, HEARTBEAT_REFRESH_MS);
  return () => { unsubscribe(); unReconnect(); clearInterval(timer); refreshRunners.cancel(); };
}
