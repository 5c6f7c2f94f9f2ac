// A small SVG line chart of a runner's CPU and memory history (GET /runners/{id}/metrics?period=24h).

const NS = "http://www.w3.org/2000/svg";
const WIDTH = 800;
const HEIGHT = 180;
const PAD = { left: 36, right: 10, top: 10, bottom: 22 };

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

// `series`: {name: [{timestamp, value}]} with values in percent; draws one polyline per named series.
export function metricsChart(series, names, { start, end }) {
  const chart = svg("svg", { class: "chart", viewBox: `0 0 ${WIDTH} ${HEIGHT}`, preserveAspectRatio: "none", role: "img" });
  const plotW = WIDTH - PAD.left - PAD.right;
  const plotH = HEIGHT - PAD.top - PAD.bottom;
  const x = (t) => PAD.left + ((t - start) / Math.max(1, end - start)) * plotW;
  const y = (v) => PAD.top + plotH - (Math.min(100, Math.max(0, v)) / 100) * plotH;
  for (const level of [0, 50, 100]) {
    chart.append(svg("line", { class: "grid", x1: PAD.left, x2: WIDTH - PAD.right, y1: y(level), y2: y(level) }));
    chart.append(svg("text", { x: 4, y: y(level) + 4 }, `${level}%`));
  }
  const hours = Math.round((end - start) / 3_600_000);
  chart.append(svg("text", { x: PAD.left, y: HEIGHT - 6 }, `${hours}h ago`));
  chart.append(svg("text", { x: WIDTH - PAD.right - 24, y: HEIGHT - 6 }, "now"));
  for (const name of names) {
    const points = (series[name] ?? [])
      .map((p) => [Date.parse(p.timestamp), p.value])
      .filter(([t]) => t >= start && t <= end)
      .map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`);
    const cls = name.replace("_usage", "");
    chart.append(svg("polyline", { class: cls, points: points.join(" "), "data-series": name }));
    if (points.length === 1) {
      const [cx, cy] = points[0].split(",");
      chart.append(svg("circle", { class: cls, cx, cy, r: 3 }));
    }
  }
  return chart;
}
