// The sign-in form: an API key or a token in a password field, exchanged once for a session cookie.

import { signIn } from "./api.js";
import { h, replace } from "./dom.js";

export function mount(main, { signedIn, reason }) {
  const input = h("input", { type: "password", id: "credential", name: "credential", autocomplete: "off", required: true,
    placeholder: "rk_… or eyJ…" });
  const error = h("p", { class: "error", id: "signin-error", role: "alert" }, reason ?? "");
  const button = h("button", { type: "submit", id: "sign-in" }, "Sign in");
  const form = h("form", { class: "panel signin", id: "signin", onsubmit: async (event) => {
    event.preventDefault();
    button.disabled = true;
    error.textContent = "";
    try {
      const identity = await signIn(input.value.trim());
      input.value = "";
      signedIn(identity);
    } catch (e) {
      error.textContent = e.status === 401 || e.status === 403 ? `Sign-in refused: ${e.message}` : e.message;
      button.disabled = false;
      input.select();
    }
  } },
  h("h1", {}, "Sign in"),
  h("label", { for: "credential" }, "API key or token"),
  input, button, error,
  h("p", { class: "muted" }, "The key is sent once and exchanged for a session that ends with this browser session."));
  replace(main, form);
  input.focus();
  return () => {};
}
