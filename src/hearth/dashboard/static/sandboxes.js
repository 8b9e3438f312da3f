// The team's sandboxes, live: state, template, age, a CPU and memory chart each, and
// pause, resume and kill (each asked first).
import { api, usePolled } from "./api.js";
import { Chart } from "./chart.js";
import { useConfirm } from "./confirm.js";
import { age, mib } from "./format.js";
import { html, useRef, useState } from "./html.js";

const LIST_EVERY_MS = 2000;
const LISTED = 100; // the API's largest page: the newest this many are shown
const METRICS_EVERY_MS = 5000;
const CHART_WINDOW_S = 600;
// What a resume from here gives the sandbox to live (the SDK's default timeout).
const RESUME_TIMEOUT_S = 300;

const ACTIONS = {
  pause: {
    label: "Pause",
    doing: "Pausing",
    detail: "Its memory and files are kept; it uses no CPU until it is resumed.",
    call: (id) => api("POST", `/sandboxes/${id}/pause`),
  },
  resume: {
    label: "Resume",
    doing: "Resuming",
    detail: `It runs again where it stopped, for ${RESUME_TIMEOUT_S / 60} minutes.`,
    call: (id) => api("POST", `/sandboxes/${id}/connect`, { body: { timeout: RESUME_TIMEOUT_S } }),
  },
  kill: {
    label: "Kill",
    doing: "Killing",
    detail: "Its processes and files are gone for good.",
    call: (id) => api("DELETE", `/sandboxes/${id}`),
  },
};

export function SandboxesPage() {
  const list = usePolled(
    () => api("GET", `/v2/sandboxes?state=running,paused&limit=${LISTED}`),
    LIST_EVERY_MS,
  );
  const [dialog, ask] = useConfirm();
  const [doing, setDoing] = useState({});
  const [failure, setFailure] = useState(null);

  const run = async (name, id) => {
    const action = ACTIONS[name];
    setFailure(null);
    setDoing((d) => ({ ...d, [id]: `${action.doing}…` }));
    try {
      await action.call(id);
    } catch (e) {
      setFailure(`Could not ${name} sandbox ${id}: ${e.message}`);
    } finally {
      setDoing(({ [id]: _, ...rest }) => rest);
      list.refresh();
    }
  };
  const askTo = (name, id) =>
    ask({
      title: `${ACTIONS[name].label} sandbox ${id}?`,
      detail: ACTIONS[name].detail,
      confirm: `${ACTIONS[name].label} sandbox`,
      onConfirm: () => run(name, id),
    });

  const sandboxes = list.data;
  return html`
    <h1>Sandboxes</h1>
    ${failure && html`<p role="alert" class="error">${failure}</p>`}
    ${list.error && html`<p role="alert" class="error">Cannot list sandboxes: ${list.error.message}</p>`}
    ${
      sandboxes === undefined
        ? html`<p>Loading sandboxes…</p>`
        : sandboxes.length === 0
          ? html`<p>No sandboxes are running or paused.</p>`
          : html`
              <p>${summary(sandboxes)}</p>
              <table aria-label="Sandboxes">
                <thead>
                  <tr>
                    <th scope="col">Sandbox</th>
                    <th scope="col">State</th>
                    <th scope="col">Template</th>
                    <th scope="col">Age</th>
                    <th scope="col">CPU and memory</th>
                    <th scope="col">Actions</th>
                  </tr>
                </thead>
                <tbody>
                  ${sandboxes.map(
                    (s) =>
                      html`<${SandboxRow}
                        key=${s.sandboxID}
                        sandbox=${s}
                        doing=${doing[s.sandboxID]}
                        askTo=${askTo}
                      />`,
                  )}
                </tbody>
              </table>
            `
    }
    ${dialog}
  `;
}

function SandboxRow({ sandbox, doing, askTo }) {
  const id = sandbox.sandboxID;
  const button = (name) => html`
    <button
      type="button"
      class=${name === "kill" ? "danger" : ""}
      aria-label=${`${ACTIONS[name].label} sandbox ${id}`}
      disabled=${!!doing}
      onClick=${() => askTo(name, id)}
    >
      ${ACTIONS[name].label}
    </button>
  `;
  return html`
    <tr>
      <td><code>${id}</code></td>
      <td><span class=${`state state-${sandbox.state}`}>${sandbox.state}</span></td>
      <td>${sandbox.alias || sandbox.templateID}</td>
      <td title=${sandbox.startedAt}>${age(sandbox.startedAt)}</td>
      <td><${SandboxUsage} sandbox=${sandbox} /></td>
      <td class="actions">
        ${sandbox.state === "running" ? button("pause") : button("resume")} ${button("kill")}
        ${doing && html`<span role="status">${doing}</span>`}
      </td>
    </tr>
  `;
}

// The sandbox's CPU and memory over the last minutes: the samples the API has for the
// window (one live sample per call where it keeps no history), gathered while it runs.
function SandboxUsage({ sandbox }) {
  const id = sandbox.sandboxID;
  const running = sandbox.state === "running";
  const samples = useRef(new Map());
  const polled = usePolled(
    async () => {
      if (!running) return samples.current;
      const now = Math.floor(Date.now() / 1000);
      const got = await api("GET", `/sandboxes/${id}/metrics?start=${now - CHART_WINDOW_S}`);
      for (const m of got) samples.current.set(m.timestampUnix, m);
      for (const t of samples.current.keys()) {
        if (t < now - CHART_WINDOW_S) samples.current.delete(t);
      }
      return new Map(samples.current);
    },
    running ? METRICS_EVERY_MS : 0,
    [id, running],
  );
  const shown = [...(polled.data ?? new Map()).values()].sort(
    (a, b) => a.timestampUnix - b.timestampUnix,
  );
  const last = shown.at(-1);
  const data = [
    shown.map((m) => m.timestampUnix),
    shown.map((m) => m.cpuUsedPct),
    shown.map((m) => m.memUsed / 1048576),
  ];
  return html`
    <div class="usage">
      <${Chart}
        label=${`CPU and memory of sandbox ${id}`}
        series=${[
          { label: "CPU %", scale: "%", stroke: "#d9480f" },
          { label: "Memory MiB", scale: "MiB", stroke: "#1c7ed6" },
        ]}
        scales=${{
          x: { range: () => chartWindow(sandbox.startedAt) },
          "%": { range: [0, 100] },
          MiB: { range: (u, lo, hi) => [0, Math.max(hi, 1)] },
        }}
        data=${data}
        width=${320}
        height=${130}
      />
      <p class="figures">
        ${
          last
            ? figures(last)
            : polled.error
              ? `No metrics: ${polled.error.message}`
              : running
                ? "Waiting for metrics…"
                : "Paused"
        }
      </p>
    </div>
  `;
}

function figures(last) {
  const cpu = `CPU ${last.cpuUsedPct.toFixed(1)}%`;
  const memory = `memory ${mib(last.memUsed)} of ${mib(last.memTotal)}`;
  return html`<span class="cpu">${cpu}</span>${" · "}<span class="mem">${memory}</span>`;
}

// The chart's time axis: the last minutes, or since the sandbox started if that is later.
function chartWindow(startedAt) {
  const now = Date.now() / 1000;
  const started = new Date(startedAt).getTime() / 1000;
  return [Math.min(now - 30, Math.max(started, now - CHART_WINDOW_S)), now];
}

function summary(sandboxes) {
  const paused = sandboxes.filter((s) => s.state === "paused").length;
  const counts = `${sandboxes.length - paused} running, ${paused} paused`;
  return sandboxes.length < LISTED ? counts : `The newest ${LISTED}: ${counts}`;
}
