// The team's API keys: list, create (the whole key is shown once, then only its ends),
// revoke (asked first).
import { api, session, usePolled } from "./api.js";
import { useConfirm } from "./confirm.js";
import { when } from "./format.js";
import { html, useState } from "./html.js";

const masked = (k) => `${k.mask.prefix}${k.mask.maskedValuePrefix}…${k.mask.maskedValueSuffix}`;

// Whether `k` (a listed key, of which only the ends are known) is this session's key.
const isSessions = (k) => {
  const key = session.key() ?? "";
  return (
    key.startsWith(k.mask.prefix + k.mask.maskedValuePrefix) &&
    key.endsWith(k.mask.maskedValueSuffix)
  );
};

export function KeysPage() {
  const list = usePolled(() => api("GET", "/api-keys"), 0);
  const [dialog, ask] = useConfirm();
  const [name, setName] = useState("");
  const [created, setCreated] = useState(null);
  const [failure, setFailure] = useState(null);

  const create = async (event) => {
    event.preventDefault();
    setFailure(null);
    try {
      setCreated(await api("POST", "/api-keys", { body: { name: name.trim() } }));
      setName("");
    } catch (e) {
      setFailure(`Could not create the key: ${e.message}`);
    }
    list.refresh();
  };
  const revoke = (k) =>
    ask({
      title: `Revoke API key ${k.name}?`,
      detail: isSessions(k)
        ? "This is the key this dashboard is logged in with: you will be logged out."
        : "Whoever uses it is refused from then on.",
      confirm: "Revoke key",
      onConfirm: async () => {
        setFailure(null);
        try {
          await api("DELETE", `/api-keys/${encodeURIComponent(k.id)}`);
          if (created?.id === k.id) setCreated(null);
        } catch (e) {
          setFailure(`Could not revoke ${k.name}: ${e.message}`);
        }
        list.refresh();
      },
    });

  return html`
    <h1>API keys</h1>
    ${failure && html`<p role="alert" class="error">${failure}</p>`}
    ${list.error && html`<p role="alert" class="error">Cannot list the keys: ${list.error.message}</p>`}
    <form class="inline" onSubmit=${create} aria-label="Create an API key">
      <label for="key-name">Name of a new key</label>
      <input
        id="key-name"
        required
        maxlength="128"
        value=${name}
        onInput=${(e) => setName(e.target.value)}
      />
      <button type="submit">Create key</button>
    </form>
    ${
      created &&
      html`
        <section class="created" aria-labelledby="created-title">
          <h2 id="created-title">New key ${created.name}</h2>
          <p>Copy it now: it is not shown again.</p>
          <p><code aria-label="New API key">${created.key}</code></p>
          <button type="button" onClick=${() => setCreated(null)}>Done</button>
        </section>
      `
    }
    ${
      list.data === undefined
        ? html`<p>Loading keys…</p>`
        : html`
            <table aria-label="API keys">
              <thead>
                <tr>
                  <th scope="col">Name</th>
                  <th scope="col">Key</th>
                  <th scope="col">Created</th>
                  <th scope="col">Last used</th>
                  <th scope="col">Actions</th>
                </tr>
              </thead>
              <tbody>
                ${list.data.map(
                  (k) => html`
                    <tr key=${k.id}>
                      <td>${k.name}${isSessions(k) ? " (this session)" : ""}</td>
                      <td><code>${masked(k)}</code></td>
                      <td>${when(k.createdAt)}</td>
                      <td>${when(k.lastUsed)}</td>
                      <td>
                        <button
                          type="button"
                          class="danger"
                          aria-label=${`Revoke ${k.name}`}
                          onClick=${() => revoke(k)}
                        >
                          Revoke
                        </button>
                      </td>
                    </tr>
                  `,
                )}
              </tbody>
            </table>
          `
    }
    ${dialog}
  `;
}
