// A small time-series chart (uPlot): `data` is [unix seconds[], ...one array a series].
import uPlot from "uplot";
import { html, useEffect, useRef } from "./html.js";

// `series`: [{label, scale, stroke}]; `scales`: uPlot's, by name (`x` in unix seconds);
// `label` names the chart for assistive technology (the numbers are also given as text).
export function Chart({ label, series, scales, data, width = 320, height = 120 }) {
  const box = useRef(null);
  const plot = useRef(null);
  useEffect(() => {
    const axes = [
      { font: FONT, space: 70, values: timeLabels },
      ...[...new Set(series.map((s) => s.scale))].map(axisOf),
    ];
    plot.current = new uPlot(
      {
        width,
        height,
        legend: { show: false },
        scales: { ...scales, x: { time: true, ...scales.x } },
        series: [{}, ...series.map((s) => ({ ...s, width: 1.5 }))],
        axes,
      },
      data,
      box.current,
    );
    return () => plot.current.destroy();
  }, []);
  useEffect(() => plot.current?.setData(data), [data]);
  return html`<div class="chart" role="img" aria-label=${label} ref=${box}></div>`;
}

const FONT = "11px system-ui, sans-serif";

function axisOf(scale, i) {
  return { scale, side: i === 0 ? 3 : 1, size: 44, space: 20, font: FONT, grid: { show: i === 0 } };
}

// One line of time per tick, as fine as the span shown needs.
function timeLabels(u, splits) {
  const span = u.scales.x.max - u.scales.x.min;
  const parts =
    span <= 300
      ? { hour: "2-digit", minute: "2-digit", second: "2-digit" }
      : span <= 2 * 86400
        ? { hour: "2-digit", minute: "2-digit" }
        : { month: "short", day: "numeric", hour: "2-digit" };
  return splits.map((t) => new Date(t * 1000).toLocaleString([], parts));
}
