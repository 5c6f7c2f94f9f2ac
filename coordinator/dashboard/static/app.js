// The dashboard's entry point: sign-in state, the hash router (#/, #/runners/ID, #/jobs/RUNNER/JOB) and the
// one WebSocket of live events that every view subscribes to.

import { resume, signOut, whenSignedOut } from "./api.js";
import * as job from "./job.js";
import { LiveEvents } from "./live.js";
import * as overview from "./overview.js";
import * as runner from "./runner.js";
import * as signin from "./signin.js";

const ROUTES = [
  [/^#\/runners\/([^/]+)$/, runner],
  [/^#\/jobs\/([^/]+)\/([^/]+)$/, job],
  [/^#?\/?$/, overview],
];

const main = document.getElementById("main");
const who = document.getElementById("who");
const signOutButton = document.getElementById("sign-out");
const live = new LiveEvents(document.getElementById("live"));
let identity = null;
let unmount = () => {};

function show(view, context) {
  unmount();
  unmount = view.mount(main, { live, role: identity?.role, signedOut, ...context }) ?? (() => {});
}

function route() {
  if (!identity) return;
  for (const [pattern, view] of ROUTES) {
    const match = location.hash.match(pattern);
    if (match) return show(view, { params: match.slice(1).map(decodeURIComponent) });
  }
  main.replaceChildren(document.createTextNode("No such page."));
}

function signedIn(who_) {
  identity = who_;
  who.textContent = `${identity.subject} (${identity.role})`;
  who.dataset.role = identity.role;
  signOutButton.hidden = false;
  live.start();
  route();
}

function signedOut(error) {
  identity = null;
  live.stop();
  who.textContent = "";
  delete who.dataset.role;
  signOutButton.hidden = true;
  show(signin, { signedIn, reason: error?.message });
}

whenSignedOut(signedOut);
signOutButton.addEventListener("click", async () => {
  await signOut().catch(() => {});
  signedOut();
});
window.addEventListener("hashchange", route);

resume().then((found) => (found ? signedIn(found) : signedOut()), (e) => signedOut(e));
