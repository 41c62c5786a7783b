// Talking to the server: JSON calls, and the save queue that never loses an accepted object.
//
// Every change (create, update, delete) goes through the queue. The queue is written to
// localStorage before the first attempt, so a reload or a crash resends it; each create carries an
// Idempotency-Key, so a resend after a lost response lands exactly once. Network errors and 5xx/429
// answers are retried with backoff; other 4xx answers are reported and dropped.

export class ApiError extends Error {
  constructor(status, detail, body) {
    super(detail);
    this.status = status;
    this.body = body;
  }
}

export class Api {
  constructor() {
    this.csrf = null;
  }

  async request(method, url, body, headers = {}) {
    const h = { ...headers };
    if (body !== undefined) h["Content-Type"] = "application/json";
    if (this.csrf && method !== "GET") h["X-CSRF-Token"] = this.csrf;
    return fetch(url, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body), credentials: "same-origin" });
  }

  async json(method, url, body, headers) {
    const response = await this.request(method, url, body, headers);
    if (response.status === 204) return null;
    let data = null;
    try { data = await response.json(); } catch { data = null; }
    if (!response.ok) throw new ApiError(response.status, (data && data.detail) || `HTTP ${response.status}`, data);
    return data;
  }
}

const STORE = "segany.annotate.pending";

export function newKey() {
  if (self.crypto?.randomUUID) return crypto.randomUUID();
  return `${Date.now().toString(16)}-${Math.random().toString(16).slice(2)}`;
}

export class SaveQueue {
  /** onChange(queue, lastError) is called whenever the queue or its state changes;
   *  onDone(item, result) after an item landed; onFail(item, error) after a permanent refusal. */
  constructor(api, { onChange, onDone, onFail }) {
    this.api = api;
    this.onChange = onChange;
    this.onDone = onDone;
    this.onFail = onFail;
    this.items = this.load();
    this.busy = false;
    this.delay = 500;
    this.timer = null;
    this.lastError = null;
    self.addEventListener("online", () => this.retryNow());
  }

  load() {
    try { return JSON.parse(localStorage.getItem(STORE) || "[]"); } catch { return []; }
  }

  store() {
    localStorage.setItem(STORE, JSON.stringify(this.items));
  }

  add(item) {
    this.items.push({ key: newKey(), ...item });
    this.store();
    this.onChange(this.items, this.lastError);
    this.run();
  }

  retryNow() {
    clearTimeout(this.timer);
    this.timer = null;
    this.delay = 500;
    this.run();
  }

  async run() {
    if (this.busy || this.timer) return;
    this.busy = true;
    try {
      while (this.items.length) {
        const item = this.items[0];
        let response;
        try {
          const headers = { ...(item.headers || {}) };
          if (item.method === "POST") headers["Idempotency-Key"] = item.key;
          response = await this.api.request(item.method, item.url, item.body, headers);
        } catch (err) {
          this.fail(`network error: ${err.message || err}`);
          return;
        }
        if (response.status >= 500 || response.status === 429 || response.status === 408) {
          this.fail(`server answered ${response.status}`);
          return;
        }
        let data = null;
        try { data = response.status === 204 ? null : await response.json(); } catch { data = null; }
        this.items.shift();
        this.store();
        this.delay = 500;
        this.lastError = null;
        if (response.ok) this.onDone(item, data);
        else this.onFail(item, new Error((data && data.detail) || `HTTP ${response.status}`), response.status, data);
        this.onChange(this.items, null);
      }
    } finally {
      this.busy = false;
    }
  }

  fail(message) {
    this.lastError = message;
    this.onChange(this.items, message);
    this.timer = setTimeout(() => { this.timer = null; this.run(); }, this.delay);
    this.delay = Math.min(this.delay * 2, 8000);
  }
}

/** The session for `api`; when the server asks for authentication (401), the page's sign-in form
 * (#login, #login-form, #login-user, #login-password, #login-error) first. Shared by every page. */
export async function signIn(api) {
  const $ = (id) => document.getElementById(id);
  try {
    return await api.json("GET", "/api/session");
  } catch (err) {
    if (!(err instanceof ApiError) || err.status !== 401) throw err;
  }
  $("login").hidden = false;
  $("login-user").focus();
  return new Promise((resolve) => {
    $("login-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      try {
        await api.json("POST", "/api/login", { username: $("login-user").value, password: $("login-password").value });
        const session = await api.json("GET", "/api/session");
        $("login").hidden = true;
        resolve(session);
      } catch (err) {
        $("login-error").textContent = err.message;
      }
    });
  });
}
