// The live events of /api/runners/ws, one connection for the whole page, re-opened after a drop.
// The browser sends the session cookie on the handshake, so the URL carries no credential.

const MAX_BACKOFF_MS = 10_000;

export class LiveEvents {
  constructor(indicator) {
    this.indicator = indicator;
    this.listeners = new Set();
    this.reconnectListeners = new Set();
    this.socket = null;
    this.backoff = 250;
    this.stopped = true;
    this.timer = null;
    this.wasOpen = false;
  }

  start() {
    this.stopped = false;
    this.indicator.hidden = false;
    this.open();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.indicator.hidden = true;
    if (this.socket) this.socket.close(1000);
    this.socket = null;
  }

  // `callback(event)` for every event; returns the function that unsubscribes.
  subscribe(callback) {
    this.listeners.add(callback);
    return () => this.listeners.delete(callback);
  }

  // `callback()` after the connection came back: what happened meanwhile was missed, so views re-read.
  onReconnect(callback) {
    this.reconnectListeners.add(callback);
    return () => this.reconnectListeners.delete(callback);
  }

  open() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(`${scheme}//${location.host}/api/runners/ws`);
    let opened = false;
    this.socket = socket;
    socket.addEventListener("open", () => {
      const again = this.wasOpen;
      opened = true;
      this.wasOpen = true;
      this.backoff = 250;
      this.indicator.classList.add("on");
      if (again) for (const callback of this.reconnectListeners) callback();
    });
    socket.addEventListener("message", (message) => {
      let event;
      try { event = JSON.parse(message.data); } catch { return; }
      for (const callback of this.listeners) callback(event);
    });
    socket.addEventListener("close", () => {
      this.indicator.classList.remove("on");
      if (this.stopped || this.socket !== socket) return;
      if (!opened) this.backoff = Math.min(this.backoff * 2, MAX_BACKOFF_MS);
      this.timer = setTimeout(() => this.open(), this.backoff);
    });
  }
}
