// The public API, called with the session cookie the browser holds (HttpOnly: this script never sees it).
// Changes carry the session's CSRF token in X-RustCI-CSRF; a 401 means the session is gone.

const CSRF_HEADER = "X-RustCI-CSRF";
let csrfToken = null;
let onSignedOut = () => {};

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details ?? {};
  }
}

export function whenSignedOut(callback) {
  onSignedOut = callback;
}

export function csrfHeaders() {
  return csrfToken ? { [CSRF_HEADER]: csrfToken } : {};
}

export async function call(method, path, { body, headers = {}, quiet401 = false } = {}) {
  const sent = { Accept: "application/json", ...headers };
  if (method !== "GET") Object.assign(sent, csrfHeaders());
  if (body !== undefined) sent["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(`/api${path}`, {
      method,
      headers: sent,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
    });
  } catch (e) {
    throw new ApiError(0, "NETWORK", `The coordinator did not answer (${e.message})`);
  }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!response.ok) {
    const error = data?.error ?? {};
    const failure = new ApiError(response.status, error.code ?? `HTTP_${response.status}`,
      error.message ?? response.statusText, error.details);
    if (response.status === 401 && !quiet401) onSignedOut(failure);
    throw failure;
  }
  return data;
}

export const get = (path, options) => call("GET", path, options);
export const post = (path, body, options) => call("POST", path, { ...options, body });

function looksLikeJwt(credential) {
  return credential.startsWith("eyJ") && credential.split(".").length === 3;
}

// The credential travels once, in a header of this request, and becomes the session cookie.
export async function signIn(credential) {
  const headers = looksLikeJwt(credential) ? { Authorization: `Bearer ${credential}` } : { "X-API-Key": credential };
  const identity = await call("POST", "/session", { headers, quiet401: true });
  csrfToken = identity.csrf_token;
  return identity;
}

// Who the cookie says we are (after a reload, say); null when there is no valid session.
export async function resume() {
  try {
    const identity = await call("GET", "/whoami", { quiet401: true });
    csrfToken = identity.csrf_token ?? null;
    return identity;
  } catch (e) {
    if (e.status === 401) return null;
    throw e;
  }
}

export async function signOut() {
  try { await call("DELETE", "/session", { quiet401: true }); } finally { csrfToken = null; }
}

export function path(...parts) {
  return parts.map(encodeURIComponent).join("/");
}
