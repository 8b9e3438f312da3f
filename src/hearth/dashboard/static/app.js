// The dashboard's shell: logging in with an API key, the navigation, and which page the
// address (#/sandboxes, #/templates/ID/builds/ID, …) shows.
import { api, session, whenUnauthorized } from "./api.js";
import { html, render, useEffect, useState } from "./html.js";
import { KeysPage } from "./keys.js";
import { SandboxesPage } from "./sandboxes.js";
import { BuildPage, TemplatePage, TemplatesPage } from "./templates.js";
import { UsagePage } from "./usage.js";

const PAGES = [
  ["sandboxes", "Sandboxes"],
  ["templates", "Templates"],
  ["keys", "API keys"],
  ["usage", "Usage"],
];

// The caller's team: `/teams` answers with the one team a key belongs to.
async function teamOf(key) {
  const [team] = await api("GET", "/teams", { key });
  return team;
}

function App() {
  const [team, setTeam] = useState(null);
  const [checking, setChecking] = useState(session.key() !== null);
  const [notice, setNotice] = useState(null);
  useEffect(() => {
    whenUnauthorized(() => {
      session.clear();
      setTeam(null);
      setNotice("The server no longer accepts this session's API key: log in again.");
    });
    const key = session.key();
    if (key === null) return;
    teamOf(key)
      .then(setTeam, (e) => {
        // A refused key is forgotten; an unreachable server may be back at the next try.
        if (e.status === 401) session.clear();
        else setNotice(e.message);
      })
      .finally(() => setChecking(false));
  }, []);
  if (checking) return html`<p>Checking the session…</p>`;
  if (!team) {
    return html`<${Login}
      notice=${notice}
      onLogin=${(t) => {
        setNotice(null);
        setTeam(t);
      }}
    />`;
  }
  const logOut = () => {
    session.clear();
    setTeam(null);
  };
  return html`<${Shell} team=${team} onLogOut=${logOut} />`;
}

function Login({ notice, onLogin }) {
  const [key, setKey] = useState("");
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const submit = async (event) => {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const team = await teamOf(key.trim());
      session.save(key.trim());
      onLogin(team);
    } catch (e) {
      setError(e.status === 401 ? `This API key was refused: ${e.message}` : e.message);
    } finally {
      setBusy(false);
    }
  };
  return html`
    <main class="login">
      <h1>Hearth</h1>
      ${notice && html`<p role="status">${notice}</p>`}
      <form onSubmit=${submit} aria-label="Log in">
        <label for="api-key">API key</label>
        <input
          id="api-key"
          type="password"
          autocomplete="off"
          spellcheck="false"
          required
          placeholder="e2b_…"
          value=${key}
          onInput=${(e) => setKey(e.target.value)}
        />
        <button type="submit" disabled=${busy}>Log in</button>
        ${error && html`<p role="alert" class="error">${error}</p>`}
      </form>
      <p class="hint">
        The key (<code>hearth keys create</code> makes one) stays in this browser tab and is sent
        only to this server.
      </p>
    </main>
  `;
}

function useRoute() {
  const read = () => location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decoded);
  const [route, setRoute] = useState(read);
  useEffect(() => {
    const changed = () => setRoute(read());
    addEventListener("hashchange", changed);
    return () => removeEventListener("hashchange", changed);
  }, []);
  return route;
}

// A segment of the address as typed, if it is not valid percent-encoding.
function decoded(segment) {
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}

function Shell({ team, onLogOut }) {
  const route = useRoute();
  const section = PAGES.some(([p]) => p === route[0]) ? route[0] : "sandboxes";
  useEffect(() => {
    document.title = `${PAGES.find(([p]) => p === section)[1]} · Hearth`;
  }, [section]);
  return html`
    <header>
      <span class="brand">Hearth</span>
      <nav aria-label="Main">
        <ul>
          ${PAGES.map(
            ([page, label]) => html`
              <li>
                <a href=${`#/${page}`} aria-current=${page === section ? "page" : undefined}
                  >${label}</a
                >
              </li>
            `,
          )}
        </ul>
      </nav>
      <span class="team">Team <strong>${team.name}</strong></span>
      <button type="button" onClick=${onLogOut}>Log out</button>
    </header>
    <main>${pageOf(section, route, team)}</main>
  `;
}

function pageOf(section, route, team) {
  if (section === "templates") {
    const [, templateId, builds, buildId] = route;
    if (templateId && builds === "builds" && buildId) {
      return html`<${BuildPage} templateId=${templateId} buildId=${buildId} />`;
    }
    if (templateId) return html`<${TemplatePage} templateId=${templateId} />`;
    return html`<${TemplatesPage} />`;
  }
  if (section === "keys") return html`<${KeysPage} />`;
  if (section === "usage") return html`<${UsagePage} team=${team} />`;
  return html`<${SandboxesPage} />`;
}

const root = document.getElementById("app");
root.replaceChildren(); // the "Loading" placeholder: Preact renders beside what is there
render(html`<${App} />`, root);
