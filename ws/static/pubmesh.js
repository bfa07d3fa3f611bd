// pubmesh.js: the JavaScript client of the pubmesh WebSocket gateway.
// An ES module with no dependencies; the protocol is in docs/protocol.md.
//
//   import { PubMesh } from '/pubmesh.js';
//   const pm = new PubMesh({ token: () => fetch('/my-token').then(r => r.text()) });
//   pm.on('message', m => console.log(m.channel, m.data, m.latency));
//   pm.on('state', s => console.log(s)); // 'connecting' | 'open' | 'closed'
//   await pm.subscribe('news');
//   await pm.publish('chat.room', { text: 'hi' });
//
// It reconnects by itself with exponential backoff and jitter, and
// re-subscribes every channel after a reconnect. subscribe, unsubscribe,
// publish and ping return promises settled by the gateway's reply (matched
// by id); they reject with a PubMeshError whose code is the gateway's error
// code, or 'timeout', 'disconnected' or 'closed'.

/** An error reply, or a request that could not complete. */
export class PubMeshError extends Error {
  constructor(code, message) {
    super(message || code);
    this.name = 'PubMeshError';
    this.code = code;
  }
}

/** Close codes the gateway sends (see docs/protocol.md). */
export const CloseCodes = Object.freeze({
  GOING_AWAY: 1001,
  TOO_BIG: 1009,
  INTERNAL: 1011,
  TOKEN_EXPIRED: 4001,
  SLOW_CONSUMER: 4008,
});

function defaultURL() {
  const loc = globalThis.location;
  if (!loc) throw new Error('pubmesh: no url given and no location to derive it from');
  return (loc.protocol === 'https:' ? 'wss://' : 'ws://') + loc.host + '/ws';
}

export class PubMesh {
  /**
   * @param {object} [opts]
   * @param {string} [opts.url] ws:// or wss:// URL of /ws. Default: this page's host.
   * @param {string|function():(string|Promise<string>)} [opts.token] JWT or API key,
   *   or a function called before every (re)connect, so an expired token can be renewed.
   * @param {number} [opts.minDelay=500] first reconnect delay, ms.
   * @param {number} [opts.maxDelay=15000] largest reconnect delay, ms.
   * @param {number} [opts.timeout=10000] how long a request waits for its reply, ms.
   * @param {number} [opts.idle=30000] after this long without a frame, ping; no reply
   *   within timeout means the connection is dead and is replaced.
   * @param {boolean} [opts.connect=true] connect at once.
   * @param {typeof WebSocket} [opts.WebSocket] WebSocket implementation.
   */
  constructor(opts = {}) {
    this.url = opts.url || defaultURL();
    this.token = opts.token ?? null;
    this.minDelay = opts.minDelay ?? 500;
    this.maxDelay = opts.maxDelay ?? 15000;
    this.timeout = opts.timeout ?? 10000;
    this.idle = opts.idle ?? 30000;
    this._WS = opts.WebSocket || globalThis.WebSocket;
    this._handlers = new Map(); // event -> Set of functions
    this._channels = new Map(); // channel -> { active, waiters: [{resolve, reject}], handlers: Set }
    this._pending = new Map(); // request id -> { op, channel, resolve, reject, timer }
    this._openWaiters = new Set(); // requests waiting for the socket to open
    this._nextId = 1;
    this._attempt = 0;
    this._ws = null;
    this._retry = null; // reconnect timer
    this._idleTimer = null;
    this._lastFrame = 0;
    this._state = 'closed';
    this._stopped = true;
    if (opts.connect !== false) this.connect();
  }

  /** 'connecting', 'open' or 'closed'. */
  get state() {
    return this._state;
  }

  /** Channels subscribed to (or being subscribed to). */
  get channels() {
    return [...this._channels.keys()];
  }

  /** Whether the gateway has confirmed the subscription to channel (on this connection). */
  isActive(channel) {
    return this._channels.get(channel)?.active === true;
  }

  /**
   * Listen to 'message' ({channel, data, id, ts, latency}), 'state' (state, info),
   * 'subscribed' (channel: confirmed, also after each reconnect), 'error'
   * (PubMeshError) or 'close' ({code, reason}). Returns a function that removes
   * the listener.
   */
  on(event, fn) {
    if (!this._handlers.has(event)) this._handlers.set(event, new Set());
    this._handlers.get(event).add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    this._handlers.get(event)?.delete(fn);
  }

  _emit(event, ...args) {
    for (const fn of this._handlers.get(event) || []) {
      try {
        fn(...args);
      } catch (e) {
        setTimeout(() => { throw e; });
      }
    }
  }

  _setState(state, info = {}) {
    if (this._state === state && state !== 'connecting') return;
    this._state = state;
    this._emit('state', state, info);
  }

  /** Connect (again, after close). */
  connect() {
    this._stopped = false;
    if (this._ws || this._retry) return;
    this._dial();
  }

  async _dial() {
    this._setState('connecting', { attempt: this._attempt });
    let url = this.url;
    try {
      const tok = typeof this.token === 'function' ? await this.token() : this.token;
      if (tok) url += (url.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(tok);
    } catch (e) {
      this._emit('error', new PubMeshError('token', 'pubmesh: getting a token failed: ' + e));
      this._scheduleRetry();
      return;
    }
    if (this._stopped) return;
    let ws;
    try {
      ws = new this._WS(url);
    } catch (e) {
      this._emit('error', new PubMeshError('connect', String(e)));
      this._scheduleRetry();
      return;
    }
    this._ws = ws;
    ws.onopen = () => {
      if (this._ws !== ws) return;
      this._attempt = 0;
      this._lastFrame = Date.now();
      this._setState('open');
      this._startIdleCheck();
      // Re-subscribe everything, then release requests made while offline.
      for (const [channel, ch] of this._channels) {
        ch.active = false;
        this._send({ op: 'subscribe', channel }, 'subscribe', channel).catch(() => {});
      }
      const waiting = [...this._openWaiters];
      this._openWaiters.clear();
      for (const w of waiting) w.go();
    };
    ws.onmessage = (ev) => {
      if (this._ws !== ws) return;
      this._lastFrame = Date.now();
      this._onFrame(ev.data);
    };
    ws.onclose = (ev) => {
      if (this._ws !== ws) return;
      this._ws = null;
      this._stopIdleCheck();
      for (const ch of this._channels.values()) ch.active = false;
      for (const [id, p] of this._pending) {
        this._pending.delete(id);
        clearTimeout(p.timer);
        // A subscribe in flight is retried after the reconnect; its
        // waiters keep waiting for that.
        if (p.op !== 'subscribe') p.reject(new PubMeshError('disconnected', 'pubmesh: connection lost'));
      }
      this._emit('close', { code: ev.code, reason: ev.reason });
      if (this._stopped) {
        this._setState('closed', { code: ev.code, reason: ev.reason });
      } else {
        this._scheduleRetry(ev.code, ev.reason);
      }
    };
    ws.onerror = () => {}; // a close event follows
  }

  _scheduleRetry(code, reason) {
    if (this._stopped || this._retry) return;
    // Exponential backoff with jitter: half the step fixed, half random, so
    // that a gateway restart does not bring every client back at once.
    const step = Math.min(this.maxDelay, this.minDelay * 2 ** this._attempt);
    const delay = Math.round(step / 2 + Math.random() * (step / 2));
    this._attempt = Math.min(this._attempt + 1, 30);
    this._setState('connecting', { attempt: this._attempt, delay, code, reason });
    this._retry = setTimeout(() => {
      this._retry = null;
      if (!this._stopped) this._dial();
    }, delay);
  }

  _startIdleCheck() {
    this._stopIdleCheck();
    if (!(this.idle > 0)) return;
    this._idleTimer = setInterval(() => {
      if (Date.now() - this._lastFrame < this.idle) return;
      const ws = this._ws;
      this.ping().catch(() => {
        if (this._ws === ws && ws) ws.close(4000, 'no reply to ping');
      });
    }, Math.min(this.idle, 5000));
  }

  _stopIdleCheck() {
    clearInterval(this._idleTimer);
    this._idleTimer = null;
  }

  _onFrame(text) {
    let f;
    try {
      f = JSON.parse(text);
    } catch {
      this._emit('error', new PubMeshError('bad_frame', 'pubmesh: frame is not JSON'));
      return;
    }
    if (f.op === 'message') {
      const m = { channel: f.channel, data: f.data, id: f.id, ts: f.ts };
      if (typeof f.ts === 'number') m.latency = Date.now() - f.ts;
      const ch = this._channels.get(f.channel);
      if (!ch) return; // unsubscribed; a message was still queued
      for (const fn of ch.handlers) {
        try {
          fn(m);
        } catch (e) {
          setTimeout(() => { throw e; });
        }
      }
      this._emit('message', m);
      return;
    }
    const p = f.id !== undefined ? this._pending.get(f.id) : undefined;
    if (!p) {
      if (f.op === 'error') this._emit('error', new PubMeshError(f.code, f.message));
      return;
    }
    this._pending.delete(f.id);
    clearTimeout(p.timer);
    if (f.op === 'ok') p.resolve();
    else p.reject(new PubMeshError(f.code || 'unknown', f.message || 'pubmesh: request failed'));
  }

  // _send sends frame with a new id once the socket is open, and settles
  // with the reply. A subscribe reply also settles the channel's waiters.
  _send(frame, op, channel) {
    return new Promise((resolve, reject) => {
      const waiter = {};
      const timer = setTimeout(() => {
        this._openWaiters.delete(waiter);
        for (const [id, p] of this._pending) {
          if (p.timer === timer) this._pending.delete(id);
        }
        reject(new PubMeshError('timeout', `pubmesh: no reply to ${op} within ${this.timeout} ms`));
      }, this.timeout);
      waiter.fail = (err) => {
        clearTimeout(timer);
        reject(err);
      };
      waiter.go = () => {
        const id = this._nextId++;
        const done = (err) => {
          if (op === 'subscribe') this._settleChannel(channel, err);
          err ? reject(err) : resolve();
        };
        this._pending.set(id, { op, channel, timer, resolve: () => done(null), reject: done });
        this._ws.send(JSON.stringify({ ...frame, id }));
      };
      if (this._ws && this._ws.readyState === 1) {
        waiter.go();
      } else if (this._stopped) {
        waiter.fail(new PubMeshError('closed', 'pubmesh: client closed'));
      } else {
        this._openWaiters.add(waiter);
      }
    });
  }

  _settleChannel(channel, err) {
    const ch = this._channels.get(channel);
    if (!ch) return;
    if (!err) {
      ch.active = true;
      for (const w of ch.waiters) w.resolve();
      ch.waiters = [];
      this._emit('subscribed', channel);
      return;
    }
    // Refused (forbidden, bad name, limit): drop the channel for good.
    this._channels.delete(channel);
    for (const w of ch.waiters) w.reject(err);
    this._emit('error', err);
  }

  /**
   * Subscribe to channel. Resolves once the gateway confirms (possibly after a
   * reconnect); rejects on an error reply or timeout. The subscription is
   * renewed after every reconnect until unsubscribe. handler, if given,
   * receives the channel's messages (besides on('message')).
   */
  subscribe(channel, handler) {
    let ch = this._channels.get(channel);
    const isNew = !ch;
    if (isNew) {
      ch = { active: false, waiters: [], handlers: new Set() };
      this._channels.set(channel, ch);
    }
    if (handler) ch.handlers.add(handler);
    if (ch.active) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const w = { resolve, reject };
      ch.waiters.push(w);
      const timer = setTimeout(() => {
        ch.waiters = ch.waiters.filter((x) => x !== w);
        reject(new PubMeshError('timeout', `pubmesh: subscribe ${channel} not confirmed within ${this.timeout} ms`));
      }, this.timeout);
      w.resolve = () => { clearTimeout(timer); resolve(); };
      w.reject = (e) => { clearTimeout(timer); reject(e); };
      // A new channel is subscribed now if open (else on open); an existing
      // one is already on its way.
      if (isNew && this._state === 'open') {
        this._send({ op: 'subscribe', channel }, 'subscribe', channel).catch(() => {});
      }
    });
  }

  /** Unsubscribe from channel. */
  unsubscribe(channel) {
    const ch = this._channels.get(channel);
    if (!ch) return Promise.resolve();
    this._channels.delete(channel);
    for (const w of ch.waiters) w.reject(new PubMeshError('unsubscribed', 'pubmesh: unsubscribed'));
    if (this._state !== 'open') return Promise.resolve();
    return this._send({ op: 'unsubscribe', channel }, 'unsubscribe', channel);
  }

  /** Publish data (any JSON value) to channel. Resolves once a node took it. */
  publish(channel, data) {
    return this._send({ op: 'publish', channel, data: data === undefined ? null : data }, 'publish', channel);
  }

  /** Round trip to the gateway. */
  ping() {
    return this._send({ op: 'ping' }, 'ping');
  }

  /** Close for good (until connect() is called again). */
  close() {
    this._stopped = true;
    clearTimeout(this._retry);
    this._retry = null;
    this._stopIdleCheck();
    const ws = this._ws;
    if (ws) {
      ws.close(1000, 'bye');
    } else {
      this._setState('closed');
    }
    const closed = new PubMeshError('closed', 'pubmesh: client closed');
    for (const w of this._openWaiters) w.fail(closed);
    this._openWaiters.clear();
    for (const ch of this._channels.values()) {
      for (const w of ch.waiters) w.reject(closed);
      ch.waiters = [];
    }
  }
}

/** connect(opts) is new PubMesh(opts). */
export function connect(opts) {
  return new PubMesh(opts);
}
