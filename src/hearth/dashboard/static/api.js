// The Hearth API as the dashboard calls it: same origin, the key (kept in this tab's
// sessionStorage only) in the X-API-Key header, errors in E2B's body read as messages.
import { useEffect, useState } from "./html.js";

const KEY = "hearth.apiKey";

export const session = {
  key: () => sessionStorage.getItem(KEY),
  save: (key) => sessionStorage.setItem(KEY, key),
  clear: () => sessionStorage.removeItem(KEY),
};

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

let unauthorized = () => {};

// What to do when the session's key stops being accepted (revoked, or a new server).
export function whenUnauthorized(callback) {
  unauthorized = callback;
}

// `method path` with a JSON `body`; the answer's JSON (null for an empty one). `key`
// sends that key instead of the session's (logging in), and a 401 then is the caller's.
export async function api(method, path, { body, key } = {}) {
  const headers = { "X-API-Key": key ?? session.key() ?? "" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, `The server cannot be reached (${e.message})`);
  }
  if (!response.ok) {
    if (response.status === 401 && key === undefined) unauthorized();
    throw new ApiError(response.status, await messageOf(response));
  }
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

async function messageOf(response) {
  try {
    const body = await response.json();
    if (typeof body?.message === "string") return body.message;
  } catch {
    // not E2B's body: the status says it
  }
  return `${response.status} ${response.statusText}`;
}

// `load()` now and then every `intervalMs` (0: once) after the one before has ended,
// while the component is there; again at once when `deps` change or on `refresh()`.
export function usePolled(load, intervalMs, deps = []) {
  const [state, setState] = useState({ data: undefined, error: null });
  const [generation, setGeneration] = useState(0);
  useEffect(() => {
    let live = true;
    let timer;
    const run = async () => {
      try {
        const data = await load();
        if (live) setState({ data, error: null });
      } catch (error) {
        if (live) setState((s) => ({ data: s.data, error }));
      }
      if (live && intervalMs) timer = setTimeout(run, intervalMs);
    };
    run();
    return () => {
      live = false;
      clearTimeout(timer);
    };
  }, [...deps, generation]);
  return { ...state, refresh: () => setGeneration((g) => g + 1) };
}
