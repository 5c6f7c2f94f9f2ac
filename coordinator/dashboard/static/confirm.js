// Asking before a write action: the page's own <dialog>, resolved true only by its Confirm button.

import { h, replace } from "./dom.js";

export function confirmAction(text, confirmLabel = "Confirm") {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = confirmLabel;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
  });
}

// A write action behind the dialog: asks, calls `action()` if confirmed, and puts its message (or the error's)
// in `notice`. Resolves once done, whatever the answer.
export async function confirmed(notice, question, label, action) {
  if (!(await confirmAction(question, label))) return;
  try {
    const result = await action();
    replace(notice, h("p", { class: "muted", id: "control-result" }, result.message));
  } catch (e) {
    replace(notice, h("p", { class: "notice" }, e.message));
  }
}
