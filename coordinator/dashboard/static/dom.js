// Building DOM nodes without innerHTML: every value becomes a text node, so nothing from the API is markup.

export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function replace(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

export function badge(status) {
  return h("span", { class: `badge ${status}`, dataset: { status } }, status);
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes}m ${String(Math.round(seconds % 60)).padStart(2, "0")}s`;
  return `${Math.floor(minutes / 60)}h ${String(minutes % 60).padStart(2, "0")}m`;
}

export function when(iso) {
  if (!iso) return "–";
  const moment = new Date(iso);
  return moment.toLocaleString(undefined, { hour12: false });
}

export function percent(value) {
  return value === null || value === undefined ? "–" : `${Number(value).toFixed(1)} %`;
}

// The time a job has run so far (or ran): from its start to its end, or to now while it runs.
export function elapsed(job) {
  if (job.duration !== null && job.duration !== undefined) return job.duration;
  if (!job.started_at) return null;
  const end = job.completed_at ? Date.parse(job.completed_at) : Date.now();
  return Math.max(0, (end - Date.parse(job.started_at)) / 1000);
}

// Calls `fn` at most once per `ms`, at the end of a burst.
export function debounce(fn, ms) {
  let timer = null;
  const wrapped = () => {
    if (timer !== null) return;
    timer = setTimeout(() => { timer = null; fn(); }, ms);
  };
  wrapped.cancel = () => { clearTimeout(timer); timer = null; };
  return wrapped;
}
