// The team's templates (and the public ones), each with its builds and a build's log.
import { api, usePolled } from "./api.js";
import { when } from "./format.js";
import { html, useEffect, useState } from "./html.js";

const LIST_EVERY_MS = 5000;
const BUILD_EVERY_MS = 2000;
const LOG_PAGE = 100;
const UNFINISHED = new Set(["waiting", "building"]);

const nameOf = (t) => t.names?.[0] ?? t.aliases?.[0] ?? t.templateID;
const templateHref = (id) => `#/templates/${encodeURIComponent(id)}`;

export function TemplatesPage() {
  const list = usePolled(() => api("GET", "/templates"), LIST_EVERY_MS);
  const templates = list.data;
  return html`
    <h1>Templates</h1>
    ${list.error && html`<p role="alert" class="error">Cannot list templates: ${list.error.message}</p>`}
    ${
      templates === undefined
        ? html`<p>Loading templates…</p>`
        : html`
            <table aria-label="Templates">
              <thead>
                <tr>
                  <th scope="col">Template</th>
                  <th scope="col">ID</th>
                  <th scope="col">Latest build</th>
                  <th scope="col">Builds</th>
                  <th scope="col">Visibility</th>
                  <th scope="col">Updated</th>
                </tr>
              </thead>
              <tbody>
                ${templates.map(
                  (t) => html`
                    <tr key=${t.templateID}>
                      <td><a href=${templateHref(t.templateID)}>${nameOf(t)}</a></td>
                      <td><code>${t.templateID}</code></td>
                      <td><${Status} status=${t.buildStatus} /></td>
                      <td>${t.buildCount}</td>
                      <td>${t.public ? "public" : "team"}</td>
                      <td>${when(t.updatedAt)}</td>
                    </tr>
                  `,
                )}
              </tbody>
            </table>
          `
    }
  `;
}

export function TemplatePage({ templateId }) {
  const got = usePolled(
    () => api("GET", `/templates/${encodeURIComponent(templateId)}`),
    LIST_EVERY_MS,
    [templateId],
  );
  const template = got.data;
  return html`
    <p><a href="#/templates">All templates</a></p>
    <h1>Template ${template ? nameOf(template) : templateId}</h1>
    ${got.error && html`<p role="alert" class="error">Cannot read the template: ${got.error.message}</p>`}
    ${
      template &&
      html`
        <dl class="facts">
          <dt>ID</dt>
          <dd><code>${template.templateID}</code></dd>
          <dt>Names</dt>
          <dd>${template.names.join(", ") || "–"}</dd>
          <dt>Resources</dt>
          <dd>
            ${template.cpuCount} vCPU, ${template.memoryMB} MiB memory, ${template.diskSizeMB} MiB
            disk
          </dd>
          <dt>Sandboxes started</dt>
          <dd>${template.spawnCount}</dd>
        </dl>
        <h2>Builds</h2>
        ${
          template.builds.length === 0
            ? html`<p>No builds.</p>`
            : html`
                <table aria-label="Builds">
                  <thead>
                    <tr>
                      <th scope="col">Build</th>
                      <th scope="col">Status</th>
                      <th scope="col">Started</th>
                      <th scope="col">Finished</th>
                    </tr>
                  </thead>
                  <tbody>
                    ${template.builds.map(
                      (b) => html`
                        <tr key=${b.buildID}>
                          <td>
                            <a
                              href=${`${templateHref(templateId)}/builds/${encodeURIComponent(b.buildID)}`}
                              >${b.buildID}</a
                            >
                          </td>
                          <td><${Status} status=${b.status} /></td>
                          <td>${when(b.createdAt)}</td>
                          <td>${when(b.finishedAt)}</td>
                        </tr>
                      `,
                    )}
                  </tbody>
                </table>
              `
        }
      `
    }
  `;
}

// A build's status and its whole log, read in order by offset, followed while it runs.
export function BuildPage({ templateId, buildId }) {
  const [build, setBuild] = useState({ status: undefined, entries: [], reason: null });
  const [error, setError] = useState(null);
  useEffect(() => {
    let live = true;
    let timer;
    const entries = [];
    const base = `/templates/${encodeURIComponent(templateId)}/builds/${encodeURIComponent(buildId)}/status`;
    const follow = async () => {
      try {
        let page;
        do {
          page = await api("GET", `${base}?logsOffset=${entries.length}&limit=${LOG_PAGE}`);
          entries.push(...page.logEntries);
        } while (live && page.logEntries.length === LOG_PAGE);
        if (!live) return;
        setError(null);
        setBuild({ status: page.status, entries: [...entries], reason: page.reason ?? null });
        if (UNFINISHED.has(page.status)) timer = setTimeout(follow, BUILD_EVERY_MS);
      } catch (e) {
        if (!live) return;
        setError(e);
        timer = setTimeout(follow, BUILD_EVERY_MS);
      }
    };
    follow();
    return () => {
      live = false;
      clearTimeout(timer);
    };
  }, [templateId, buildId]);
  return html`
    <p><a href=${templateHref(templateId)}>Back to the template</a></p>
    <h1>Build ${buildId}</h1>
    ${error && html`<p role="alert" class="error">Cannot read the build: ${error.message}</p>`}
    ${
      build.status === undefined
        ? !error && html`<p>Loading the build…</p>`
        : html`
            <p>Status: <${Status} status=${build.status} /></p>
            ${build.reason && html`<p class="error">${build.reason.message}</p>`}
            <h2 id="build-log">Build log</h2>
            <pre role="log" aria-labelledby="build-log" class="log">${logText(build.entries)}</pre>
          `
    }
  `;
}

function logText(entries) {
  if (entries.length === 0) return "(no log lines)";
  const line = (e) =>
    `${new Date(e.timestamp).toLocaleTimeString()} ${e.level.padEnd(5)} ${e.message}`;
  return entries.map(line).join("\n");
}

function Status({ status }) {
  return html`<span class=${`status status-${status}`}>${status}</span>`;
}
