// The team's usage over time: sandboxes running at once and sandboxes started per
// second, from the team metrics the API keeps.
import { api, ApiError, usePolled } from "./api.js";
import { Chart } from "./chart.js";
import { html, useState } from "./html.js";

const EVERY_MS = 15000;
const RANGES = [
  ["1h", "Last hour", 3600],
  ["6h", "Last 6 hours", 6 * 3600],
  ["24h", "Last 24 hours", 24 * 3600],
  ["7d", "Last 7 days", 7 * 24 * 3600],
];

export function UsagePage({ team }) {
  const [range, setRange] = useState("1h");
  const seconds = RANGES.find(([r]) => r === range)[2];
  const got = usePolled(
    async () => {
      const end = Math.floor(Date.now() / 1000);
      try {
        return await api(
          "GET",
          `/teams/${encodeURIComponent(team.teamID)}/metrics?start=${end - seconds}&end=${end}`,
        );
      } catch (e) {
        // A server without usage history yet answers 404: there is nothing to show.
        if (e instanceof ApiError && e.status === 404) return null;
        throw e;
      }
    },
    EVERY_MS,
    [team.teamID, seconds],
  );
  const points = got.data ?? [];
  const peak = Math.max(0, ...points.map((p) => p.concurrentSandboxes));
  return html`
    <h1>Usage</h1>
    <p>
      <label for="usage-range">Period</label>
      <select id="usage-range" value=${range} onChange=${(e) => setRange(e.target.value)}>
        ${RANGES.map(([r, label]) => html`<option value=${r}>${label}</option>`)}
      </select>
    </p>
    ${got.error && html`<p role="alert" class="error">Cannot read usage: ${got.error.message}</p>`}
    ${
      got.data === undefined && !got.error
        ? html`<p>Loading usage…</p>`
        : got.data === null
          ? html`<p role="status">This server keeps no usage history yet.</p>`
          : points.length === 0
            ? html`<p role="status">No usage in this period.</p>`
            : html`
                <p role="status">
                  At most ${peak} sandboxes at once; now ${points.at(-1).concurrentSandboxes}.
                </p>
                <${Chart}
                  key=${range}
                  label="Concurrent sandboxes and start rate over time"
                  series=${[
                    { label: "Concurrent sandboxes", scale: "n", stroke: "#1c7ed6" },
                    { label: "Starts per second", scale: "rate", stroke: "#d9480f" },
                  ]}
                  scales=${{
                    x: { range: () => [Date.now() / 1000 - seconds, Date.now() / 1000] },
                    n: { range: fromZero },
                    rate: { range: fromZero },
                  }}
                  data=${[
                    points.map((p) => p.timestampUnix),
                    points.map((p) => p.concurrentSandboxes),
                    points.map((p) => p.sandboxStartRate),
                  ]}
                  width=${720}
                  height=${240}
                />
                <p class="legend">
                  <span class="swatch blue"></span> concurrent sandboxes
                  <span class="swatch orange"></span> starts per second
                </p>
              `
    }
  `;
}

function fromZero(u, lo, hi) {
  return [0, Math.max(hi, 1)];
}
