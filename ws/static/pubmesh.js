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
// re-subscribes every channel after a reconnect. A subscribe that gets no
// reply, or a transient error (unavailable), is tried again with backoff
// until the gateway confirms it or unsubscribe; only a refusal (forbidden,
// bad_request, limit) drops the channel. subscribe, unsubscribe, publish
// and ping return promises settled by the gateway's reply (matched by id);
// they reject with a PubMeshError whose code is the gateway's error code,
// or 'timeout', 'disconnected', 'closed' or 'token_expired'.
//
// When the gateway closes with 4001 (token expired), 'tokenExpired' fires.
// With a token function the client calls it again and reconnects; with a
// fixed token it stops (state 'closed') rather than redial with a token the
// gateway refuses: set pm.token to a fresh one and call pm.connect().
//
// History (docs/history.md): on a channel whose namespace keeps history,
// the client keeps the last position (pos) the gateway gave it, and every
// re-subscribe after a reconnect resumes from it (since): the messages
// published meanwhile arrive first, once and in order ('recovered' fires
// with their count), or, when history no longer covers the whole gap,
// 'recoveryFailed' fires so that the app reloads its state. history()
// reads a channel's history.
//
// Token refresh: with getToken (an async function returning a fresh JWT),
// the client asks for a new token shortly before the current one expires
// (its exp, read from the JWT) and hands it to the gateway with the
// refresh op, without reconnecting: a long-lived page never sees 4001.
// Subscriptions the new token no longer allows end ('unsubscribed').
//
// Transports: WebSocket first. When it cannot connect twice in a row
// (a proxy that refuses or blocks the upgrade), the client falls back by
// itself to Server-Sent Events (EventSource on /sse) for what it receives
// and plain HTTP (POST /api/publish, GET /api/history) for what it sends,
// keeps resuming history channels from their positions, and stays there.
// pm.transport says which is in use ('websocket' or 'sse'), and the
// 'transport' event fires when it changes.
//
// Presence (pubmesh-presence.js, served next to this file): presence() and
// presenceStats() read who is subscribed to a channel, cluster-wide; 'join'
// and 'leave' fire for channels whose namespace has join_leave;
// watchPresence() keeps a channel's live membership; opts.info describes
// this client to the others.

import { PresenceTracker, presenceEvent, presenceRequest } from './pubmesh-presence.js';

export { PresenceTracker };

/** An error reply, or a request that could not complete. */
export class PubMeshError extends Error {
  constructor(code, message) {
    super(message || code);
    this.name = 'PubMeshError';
    this.code = code;
  }
}

/** Close codes the gateway sends (see docs/protocol.md), and NO_PONG, the
 * client's own, for a connection it dropped because a ping got no reply. */
export const CloseCodes = Object.freeze({
  GOING_AWAY: 1001,
  TOO_BIG: 1009,
  INTERNAL: 1011,
  TOKEN_EXPIRED: 4001,
  SLOW_CONSUMER: 4008,
  NO_PONG: 4000,
});

// Error codes that refuse a subscription for good; any other failure of a
// subscribe (no reply, unavailable) is tried again.
const REFUSALS = new Set(['forbidden', 'bad_request', 'limit', 'too_large', 'unauthorized', 'no_history']);

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
   *   or a function called before every (re)connect, so that an expired token is
   *   renewed (after close 4001 too). A fixed string is used until the gateway
   *   closes with 4001; then the client stops and emits 'tokenExpired'.
   * @param {number} [opts.minDelay=500] first reconnect delay, ms.
   * @param {number} [opts.maxDelay=15000] largest reconnect delay, ms.
   * @param {number} [opts.timeout=10000] how long a request waits for its reply, ms.
   * @param {number} [opts.idle=30000] after this long without a frame, ping; no reply
   *   within timeout means the connection is dead: the socket is dropped at once
   *   (close event code 4000) and replaced.
   * @param {function():Promise<string>} [opts.getToken] returns a fresh token; called
   *   before the current one expires (then sent with the refresh op, or, over SSE,
   *   used to reopen the stream), and to connect when opts.token is not given.
   * @param {boolean} [opts.fallback=true] fall back to SSE when WebSocket cannot connect.
   * @param {string} [opts.sseURL] http:// or https:// URL of /sse. Default: derived from url.
   * @param {object|string} [opts.info] what presence shows of this client (any JSON
   *   value, at most 1 KiB encoded), sent at connect (?info=); pm.info may be changed
   *   and applies from the next connect.
   * @param {boolean} [opts.connect=true] connect at once.
   * @param {typeof WebSocket} [opts.WebSocket] WebSocket implementation.
   */
  constructor(opts = {}) {
    this.url = opts.url || defaultURL();
    this.getToken = opts.getToken || null;
    this.token = opts.token ?? this.getToken ?? null;
    this.fallback = opts.fallback !== false && typeof globalThis.EventSource === 'function';
    this.sseURL = opts.sseURL || this.url.replace(/^ws/, 'http').replace(/\/ws(\?|$)/, '/sse$1');
    this.info = opts.info ?? null;
    this._transport = null; // 'websocket' or 'sse' once connected
    this._wsFailures = 0; // WebSocket dials in a row that never opened
    this._es = null; // the EventSource, over SSE
    this._tok = null; // the token of the current connection
    this._refreshTimer = null;
    this._reopen = null; // a pending reopen of the SSE stream
    this.minDelay = opts.minDelay ?? 500;
    this.maxDelay = opts.maxDelay ?? 15000;
    this.timeout = opts.timeout ?? 10000;
    this.idle = opts.idle ?? 30000;
    this._WS = opts.WebSocket || globalThis.WebSocket;
    this._handlers = new Map(); // event -> Set of functions
    // channel -> { active, waiters: [{resolve, reject}], handlers: Set,
    //   req (the subscribe in flight, or null), retry (timer), attempt,
    //   pos (the last position, history channels), recovering (messages
    //   from history still to come after a resume's ok) }
    this._channels = new Map();
    this._pending = new Map(); // request id -> { op, channel, resolve, reject, timer }
    this._openWaiters = new Set(); // requests waiting for the socket to open
    this._nextId = 1;
    this._attempt = 0;
    this._ws = null;
    this._gen = 0; // dial generation: close() and each dial move it on, so a stale dial stops
    this._dialing = false; // a dial is fetching its token
    this._retry = null; // reconnect timer
    this._idleTimer = null;
    this._pinging = false;
    this._lastFrame = 0;
    this._state = 'closed';
    this._stopped = true;
    if (opts.connect !== false) this.connect();
  }

  /** The transport in use: 'websocket', 'sse', or null before the first connection. */
  get transport() {
    return this._transport;
  }

  _setTransport(t) {
    if (this._transport === t) return;
    this._transport = t;
    this._emit('transport', t);
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
   * The last position of channel (a channel whose namespace keeps history),
   * from which a re-subscribe resumes; undefined when none is known. Keep it
   * (e.g. in localStorage) and pass it as subscribe's since after a page
   * reload to get what was published meanwhile.
   */
  position(channel) {
    return this._channels.get(channel)?.pos;
  }

  /**
   * Listen to 'message' ({channel, data, id, ts, latency, pos, recovered}),
   * 'state' (state, info), 'subscribed' (channel: confirmed, also after each
   * reconnect), 'recovered' ({channel, count}: a re-subscribe resumed from the
   * last position, and the count messages published meanwhile follow, with
   * recovered: true), 'recoveryFailed' ({channel, count, code, message}: it
   * could not prove it has everything since the last position; count messages
   * that history still had follow; reload the channel's state), 'error'
   * (PubMeshError), 'close' ({code, reason}) or 'tokenExpired' ({renew}: the
   * gateway closed with 4001; renew is true when a token function will be
   * called for a fresh token, false when the client has stopped and waits for
   * pm.token to be set and pm.connect()), 'transport' ('websocket' or 'sse'),
   * 'unsubscribed' ({channel, code, message}: the gateway ended a subscription,
   * e.g. a refreshed token no longer allows it) or 'refreshed' ({exp}: the
   * gateway took a fresh token), 'join' and 'leave' ({channel, client, user,
   * gateway, connected_at, info}: a client subscribed to or left a channel
   * this client is subscribed to, whose namespace has join_leave; this
   * client's own join comes too). Returns a function that removes the listener.
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
    if (this._ws || this._retry || this._dialing) return;
    this._dial();
  }

  async _dial() {
    const gen = ++this._gen;
    this._dialing = true;
    this._setState('connecting', { attempt: this._attempt });
    let url = this.url;
    let tok;
    try {
      tok = typeof this.token === 'function' ? await this.token() : this.token;
    } catch (e) {
      if (gen !== this._gen) return;
      this._dialing = false;
      this._emit('error', new PubMeshError('token', 'pubmesh: getting a token failed: ' + e));
      this._scheduleRetry();
      return;
    }
    // close() came during the fetch (and maybe connect(), which dials anew).
    if (gen !== this._gen || this._stopped) return;
    this._dialing = false;
    this._tok = tok || null;
    if (this.fallback && (this._transport === 'sse' || this._wsFailures >= 2)) {
      this._openSSE();
      return;
    }
    if (tok) url += (url.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(tok);
    const info = this._infoParam();
    if (info) url += (url.includes('?') ? '&' : '?') + 'info=' + encodeURIComponent(info);
    let ws;
    try {
      ws = new this._WS(url);
    } catch (e) {
      this._emit('error', new PubMeshError('connect', String(e)));
      this._scheduleRetry();
      return;
    }
    this._ws = ws;
    let opened = false;
    ws.onopen = () => {
      if (this._ws !== ws) return;
      opened = true;
      this._attempt = 0;
      this._wsFailures = 0;
      this._lastFrame = Date.now();
      this._setTransport('websocket');
      this._setState('open');
      this._startIdleCheck();
      this._scheduleRefresh();
      // Re-subscribe everything, then release requests made while offline.
      for (const channel of this._channels.keys()) this._subscribeNow(channel);
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
      if (!opened && this._ws === ws) this._wsFailures++;
      this._closed(ws, ev.code, ev.reason);
    };
    ws.onerror = () => {}; // a close event follows
  }

  // _infoParam is ?info= of a connect: info as JSON, or '' without one.
  _infoParam() {
    if (this.info === null || this.info === undefined) return '';
    return JSON.stringify(this.info);
  }

  // _closed ends the connection ws (if still current) and decides what
  // comes next: a reconnect, or nothing (close(), or 4001 with a fixed token).
  _closed(ws, code, reason) {
    if (this._ws !== ws && this._es !== ws) return;
    this._ws = null;
    if (this._es) {
      this._es.onopen = this._es.onerror = null;
      this._es.close();
      this._es = null;
    }
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    this._stopIdleCheck();
    for (const ch of this._channels.values()) {
      // Subscribed again on the next open; the channel's waiters keep
      // waiting for that.
      ch.active = false;
      ch.req = null;
      clearTimeout(ch.retry);
      ch.retry = null;
    }
    for (const [id, p] of this._pending) {
      this._pending.delete(id);
      clearTimeout(p.timer);
      p.reject(new PubMeshError('disconnected', 'pubmesh: connection lost'));
    }
    this._emit('close', { code, reason });
    if (code === CloseCodes.TOKEN_EXPIRED && !this._stopped) {
      const renew = typeof this.token === 'function';
      if (!renew) {
        // Redialing with the same token would be refused (401) forever.
        this._stopped = true;
        this._setState('closed', { code, reason });
        this._failWaiters(new PubMeshError('token_expired', 'pubmesh: token expired: set a fresh token and connect()'));
      }
      // Emitted after the state changed, so that a handler may set a token
      // and call connect() right away.
      this._emit('tokenExpired', { renew });
      if (!renew) return;
    }
    if (this._stopped) {
      this._setState('closed', { code, reason });
    } else {
      this._scheduleRetry(code, reason);
    }
  }

  // _drop abandons ws without waiting for its close handshake, which on a
  // half-open connection takes the browser a minute.
  _drop(ws, code, reason) {
    ws.onopen = ws.onmessage = ws.onclose = null;
    try {
      ws.close(code, reason);
    } catch {
      // already closing
    }
    this._closed(ws, code, reason);
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
      if (this._pinging || Date.now() - this._lastFrame < this.idle) return;
      const ws = this._ws;
      this._pinging = true;
      this.ping().then(
        () => { this._pinging = false; },
        (e) => {
          this._pinging = false;
          if (e.code === 'timeout' && ws && this._ws === ws) this._drop(ws, CloseCodes.NO_PONG, 'no reply to ping');
        },
      );
    }, Math.min(this.idle, 5000));
  }

  _stopIdleCheck() {
    clearInterval(this._idleTimer);
    this._idleTimer = null;
    this._pinging = false;
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
      const ch = this._channels.get(f.channel);
      if (!ch) return; // unsubscribed; a message was still queued
      // Not confirmed, with a position: the next subscribe resumes from the
      // position and brings this message again (this one may come from a
      // subscription the client gave up on).
      if (!ch.active && ch.pos) return;
      const m = { channel: f.channel, data: f.data, id: f.id, ts: f.ts };
      if (typeof f.ts === 'number') m.latency = Date.now() - f.ts;
      if (f.pos) {
        m.pos = f.pos;
        ch.pos = f.pos;
      }
      if (ch.recovering > 0) {
        ch.recovering--;
        m.recovered = true;
      }
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
    if (f.op === 'unsubscribed') {
      this._ended(f.channel || f.pattern, f.code, f.message);
      return;
    }
    if (f.op === 'join' || f.op === 'leave') {
      // Only for channels still subscribed: one queued before an
      // unsubscribe is stale.
      if (this._channels.has(f.channel)) this._emit(f.op, presenceEvent(f));
      return;
    }
    const p = f.id !== undefined ? this._pending.get(f.id) : undefined;
    if (!p) {
      if (f.op === 'error') this._emit('error', new PubMeshError(f.code, f.message));
      return;
    }
    this._pending.delete(f.id);
    clearTimeout(p.timer);
    if (f.op === 'ok' || f.op === 'history' || f.op === 'presence' || f.op === 'presence_stats') p.resolve(f);
    else p.reject(new PubMeshError(f.code || 'unknown', f.message || 'pubmesh: request failed'));
  }

  // _send sends frame with a new id once the socket is open, and settles
  // with the reply.
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
        if (this._transport === 'sse') {
          this._http(frame).then(
            (r) => { clearTimeout(timer); resolve(r); },
            (e) => { clearTimeout(timer); reject(e); },
          );
          return;
        }
        const id = this._nextId++;
        this._pending.set(id, { op, channel, timer, resolve, reject });
        this._ws.send(JSON.stringify({ ...frame, id }));
      };
      if ((this._ws && this._ws.readyState === 1) || (this._transport === 'sse' && this._state === 'open')) {
        waiter.go();
      } else if (this._stopped) {
        waiter.fail(new PubMeshError('closed', 'pubmesh: client closed'));
      } else {
        this._openWaiters.add(waiter);
      }
    });
  }

  // _subscribeNow sends channel's subscribe, unless the socket is not open
  // (it is sent on open), the channel is confirmed, or one is in flight.
  // With a position it resumes from it (since). No reply within timeout, or
  // a transient error, schedules another try with backoff; a refusal drops
  // the channel. A resume refused because the channel keeps no history (any
  // more) or the position is not one is tried again at once without since.
  _subscribeNow(channel) {
    const ch = this._channels.get(channel);
    if (!ch || ch.active || ch.req || this._state !== 'open') return;
    if (this._transport === 'sse') {
      this._reopenSSE(); // the stream names its channels: open it again with this one
      return;
    }
    clearTimeout(ch.retry);
    ch.retry = null;
    const req = {};
    ch.req = req;
    const since = ch.pos;
    const frame = since ? { op: 'subscribe', channel, since } : { op: 'subscribe', channel };
    this._send(frame, 'subscribe', channel).then(
      (reply) => {
        if (ch.req !== req) return; // unsubscribed, or the connection was lost
        ch.req = null;
        this._confirmed(channel, ch, since, reply);
      },
      (err) => {
        if (ch.req !== req) return;
        ch.req = null;
        if (since && (err.code === 'no_history' || err.code === 'bad_request')) {
          ch.pos = undefined;
          this._emit('recoveryFailed', { channel, count: 0, code: err.code, message: err.message });
          this._subscribeNow(channel);
          return;
        }
        if (REFUSALS.has(err.code)) {
          this._channels.delete(channel);
          for (const w of ch.waiters) w.reject(err);
          ch.waiters = [];
          this._emit('error', err);
          return;
        }
        if (since && err.code === 'timeout' && this._state === 'open') {
          // The gateway may still confirm this resume after the client gave
          // up on it; the next one must be a fresh one, not "already
          // subscribed": requests are handled in order.
          this._send({ op: 'unsubscribe', channel }, 'unsubscribe', channel).catch(() => {});
        }
        this._emit('error', err);
        const step = Math.min(this.maxDelay, this.minDelay * 2 ** ch.attempt);
        ch.attempt = Math.min(ch.attempt + 1, 30);
        ch.retry = setTimeout(() => {
          ch.retry = null;
          if (this._channels.get(channel) === ch) this._subscribeNow(channel);
        }, Math.round(step / 2 + Math.random() * (step / 2)));
      },
    );
  }

  // _confirmed applies the gateway's ok to a subscribe of channel (over
  // SSE, its subscribed event): since is the position it resumed from.
  _confirmed(channel, ch, since, reply) {
    ch.active = true;
    ch.attempt = 0;
    ch.recovering = 0;
    if (since && reply.recovered !== undefined) {
      ch.recovering = reply.count || 0;
    } else if (reply.pos) {
      ch.pos = reply.pos;
    }
    for (const w of ch.waiters) w.resolve();
    ch.waiters = [];
    this._emit('subscribed', channel);
    if (!since) return;
    const count = ch.recovering;
    if (reply.recovered === true) {
      this._emit('recovered', { channel, count });
    } else if (reply.recovered === false) {
      this._emit('recoveryFailed', { channel, count, code: 'not_recovered', message: `pubmesh: history does not cover everything published to ${channel} since the last position` });
    } else {
      this._emit('recoveryFailed', { channel, count: 0, code: 'not_resumed', message: `pubmesh: the gateway did not resume ${channel}` });
    }
  }

  // _ended drops a subscription the gateway ended (or refused for good).
  _ended(channel, code, message) {
    const ch = this._channels.get(channel);
    if (!ch) return;
    this._channels.delete(channel);
    clearTimeout(ch.retry);
    const err = new PubMeshError(code || 'unsubscribed', message || 'pubmesh: unsubscribed by the gateway');
    for (const w of ch.waiters) w.reject(err);
    ch.waiters = [];
    this._emit('unsubscribed', { channel, code: err.code, message: err.message });
  }

  // _failWaiters rejects every request waiting for the connection and every
  // subscribe waiting for confirmation.
  _failWaiters(err) {
    for (const w of this._openWaiters) w.fail(err);
    this._openWaiters.clear();
    for (const ch of this._channels.values()) {
      for (const w of ch.waiters) w.reject(err);
      ch.waiters = [];
    }
  }

  /**
   * Subscribe to channel. Resolves once the gateway confirms (possibly after a
   * reconnect); rejects on a refusal (forbidden, bad_request, limit: the
   * channel is dropped) or, after timeout ms, with 'timeout'. A subscribe that
   * got no reply or a transient error (unavailable, reported on 'error') stays
   * and is tried again with backoff until confirmed ('subscribed') or
   * unsubscribe; it is renewed after every reconnect, resuming from the last
   * position on a history channel. handler, if given, receives the channel's
   * messages (besides on('message')). opts.since, a position kept from
   * pm.position(channel) (e.g. before a page reload), resumes from it; it is
   * ignored for a channel already subscribed (that one has its own).
   */
  subscribe(channel, handler, opts = {}) {
    let ch = this._channels.get(channel);
    if (!ch) {
      ch = { active: false, waiters: [], handlers: new Set(), req: null, retry: null, attempt: 0, pos: opts.since || undefined, recovering: 0 };
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
      // Sent now if open and not already in flight (a retry waiting for its
      // backoff goes now); else on open.
      this._subscribeNow(channel);
    });
  }

  /** Unsubscribe from channel. */
  unsubscribe(channel) {
    const ch = this._channels.get(channel);
    if (!ch) return Promise.resolve();
    this._channels.delete(channel);
    clearTimeout(ch.retry);
    ch.req = null;
    for (const w of ch.waiters) w.reject(new PubMeshError('unsubscribed', 'pubmesh: unsubscribed'));
    if (this._state !== 'open') return Promise.resolve();
    if (this._transport === 'sse') {
      this._reopenSSE();
      return Promise.resolve();
    }
    return this._send({ op: 'unsubscribe', channel }, 'unsubscribe', channel).then(() => undefined);
  }

  /** Publish data (any JSON value) to channel. Resolves once a node took it. */
  publish(channel, data) {
    return this._send({ op: 'publish', channel, data: data === undefined ? null : data }, 'publish', channel).then(() => undefined);
  }

  /** Round trip to the gateway. */
  ping() {
    return this._send({ op: 'ping' }, 'ping').then(() => undefined);
  }

  /**
   * Read channel's history (authorized as a subscribe). Resolves to
   * {messages, pos, recovered}: messages ({channel, data, id, ts, pos}) oldest
   * first (newest first with reverse), at most limit (the gateway's maximum,
   * 1000, when absent), after the position since when given; pos is where to
   * go on from (history again, or subscribe's since); recovered is false when
   * history cannot prove it has everything after since. Rejects with
   * 'no_history' for a channel whose namespace keeps none.
   */
  history(channel, { since, limit, reverse } = {}) {
    const frame = { op: 'history', channel };
    if (since) frame.since = since;
    if (limit) frame.limit = limit;
    if (reverse) frame.reverse = true;
    return this._send(frame, 'history', channel).then((f) => ({
      messages: f.messages || [],
      pos: f.pos,
      recovered: f.recovered,
    }));
  }

  /**
   * Who is subscribed to channel, cluster-wide (its namespace has presence:
   * true; authorized as a subscribe). Resolves to the entries, sorted by
   * client id: [{client, user, gateway, connected_at, info}] (user is '' for
   * an anonymous client). Rejects with 'no_presence', 'forbidden' or
   * 'unavailable'. Over SSE it is GET /api/presence/{channel}.
   */
  presence(channel) {
    return this._send({ op: 'presence', channel }, 'presence', channel).then((f) => f.clients || []);
  }

  /**
   * How many clients and distinct subjects are subscribed to channel:
   * resolves to {clients, users}. Cheap enough to poll. Errors as presence().
   */
  presenceStats(channel) {
    return this._send({ op: 'presence_stats', channel }, 'presence_stats', channel).then((f) => ({ clients: f.clients, users: f.users }));
  }

  /**
   * Keep channel's live membership (a PresenceTracker: an initial read, then
   * join and leave, read again after each re-subscribe); onChange(members,
   * what) is called on every change. The channel must be subscribed for
   * join and leave to come. Call close() on it to stop.
   */
  watchPresence(channel, onChange) {
    return new PresenceTracker(this, channel, onChange);
  }

  /**
   * Hand the gateway a fresh token now (getToken's, or tok): over WebSocket
   * with the refresh op (same subject; the new claims apply at once), over
   * SSE by reopening the stream with it. Resolves once the gateway took it.
   */
  async refresh(tok) {
    if (tok === undefined) tok = await this.getToken();
    if (this._transport === 'sse') {
      this._tok = tok;
      if (typeof this.token !== 'function') this.token = tok;
      this._reopenSSE();
    } else {
      await this._send({ op: 'refresh', token: tok }, 'refresh');
      this._tok = tok;
      if (typeof this.token !== 'function') this.token = tok;
      this._scheduleRefresh();
    }
    this._emit('refreshed', { exp: jwtExp(tok) });
  }

  // _scheduleRefresh arms the refresh of the current token before its exp
  // (a fifth of its remaining life ahead, between 1 s and 1 min), when
  // getToken is given.
  _scheduleRefresh() {
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    const exp = jwtExp(this._tok);
    if (!this.getToken || !exp) return;
    const left = exp - Date.now();
    const lead = Math.min(60000, Math.max(1000, left / 5));
    this._refreshTimer = setTimeout(() => {
      this._refreshTimer = null;
      this.refresh().catch((e) => {
        this._emit('error', e instanceof PubMeshError ? e : new PubMeshError('token', 'pubmesh: refreshing the token failed: ' + e));
        // Try again while the token lasts; past its exp the gateway closes
        // with 4001 and the client reconnects with getToken.
        if (!this._refreshTimer && !this._stopped && jwtExp(this._tok) > Date.now() + 1000) {
          this._refreshTimer = setTimeout(() => { this._refreshTimer = null; this._scheduleRefresh(); }, 1000);
        }
      });
    }, Math.max(0, left - lead));
  }

  // _openSSE opens the EventSource for every channel, resuming those with a
  // position (last_event_id: channel=position pairs, the stream position
  // the gateway's SSE ids carry).
  _openSSE() {
    const q = new URLSearchParams();
    const last = new URLSearchParams();
    const since = new Map();
    for (const [name, ch] of [...this._channels].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
      q.append('channel', name);
      if (ch.pos) last.append(name, ch.pos);
      since.set(name, ch.pos);
      ch.active = false;
      ch.req = null;
    }
    this._sseSince = since;
    if (this._channels.size === 0) {
      this._sseReady(); // nothing to stream yet: publishes and history go over HTTP
      return;
    }
    if (this._tok) q.set('token', this._tok);
    const info = this._infoParam();
    if (info) q.set('info', info);
    if ([...last].length) q.set('last_event_id', last.toString());
    const es = new globalThis.EventSource(this.sseURL + (this.sseURL.includes('?') ? '&' : '?') + q);
    this._es = es;
    let opened = false;
    es.onopen = () => {
      if (this._es !== es) return;
      opened = true;
      this._sseReady();
    };
    const parse = (ev) => {
      try {
        return JSON.parse(ev.data);
      } catch {
        return null;
      }
    };
    es.addEventListener('subscribed', (ev) => {
      const f = this._es === es && parse(ev);
      const ch = f && this._channels.get(f.id);
      if (ch) this._confirmed(f.id, ch, this._sseSince.get(f.id), f);
    });
    es.addEventListener('message', (ev) => {
      if (this._es !== es) return;
      this._lastFrame = Date.now();
      this._onFrame(ev.data);
    });
    // Presence frames, and the server API ending a subscription: the same
    // frames as over WebSocket.
    for (const name of ['join', 'leave', 'unsubscribed']) {
      es.addEventListener(name, (ev) => {
        if (this._es === es) this._onFrame(ev.data);
      });
    }
    es.addEventListener('close', (ev) => {
      if (this._es !== es) return;
      const f = parse(ev) || {};
      this._closed(es, f.code || 1000, f.reason || '');
    });
    es.addEventListener('error', (ev) => {
      if (this._es !== es) return;
      if (ev.data !== undefined) {
        // The gateway's event error: a subscribe failed; the stream ends.
        const f = parse(ev) || {};
        const ch = typeof f.id === 'string' ? this._channels.get(f.id) : undefined;
        if (ch && ch.pos && (f.code === 'bad_request' || f.code === 'no_history')) {
          // The position cannot be resumed from: the next stream subscribes
          // afresh (as over WebSocket).
          ch.pos = undefined;
          this._emit('recoveryFailed', { channel: f.id, count: 0, code: f.code, message: f.message });
        } else if (ch && REFUSALS.has(f.code)) {
          this._ended(f.id, f.code, f.message);
        } else {
          this._emit('error', new PubMeshError(f.code || 'unknown', f.message));
        }
        return;
      }
      if (es.readyState === 2) {
        // Refused (an HTTP error) or failed for good: reconnect with
        // backoff, maybe with WebSocket again if SSE never worked.
        if (!opened && this._transport !== 'sse') this._wsFailures = 0;
        this._closed(es, 1006, 'event stream failed');
        return;
      }
      // EventSource reconnects by itself, with the last id it got.
      for (const [name, ch] of this._channels) {
        ch.active = false;
        this._sseSince.set(name, ch.pos);
      }
      this._setState('connecting', { attempt: this._attempt });
    });
  }

  _sseReady() {
    this._attempt = 0;
    this._setTransport('sse');
    this._setState('open');
    this._scheduleRefresh();
    const waiting = [...this._openWaiters];
    this._openWaiters.clear();
    for (const w of waiting) w.go();
    for (const name of this._channels.keys()) {
      if (!this._sseSince.has(name)) {
        this._reopenSSE(); // subscribed while the stream was not open
        break;
      }
    }
  }

  // _reopenSSE replaces the stream (its channels or its token changed),
  // once per turn of the event loop.
  _reopenSSE() {
    if (this._reopen) return;
    this._reopen = setTimeout(() => {
      this._reopen = null;
      if (this._transport !== 'sse' || this._stopped) return;
      const old = this._es;
      this._es = null;
      if (old) old.close();
      this._openSSE();
    }, 0);
  }

  // _http performs a request over HTTP, for the SSE transport.
  async _http(frame) {
    const base = this.sseURL.replace(/\/sse(\?.*)?$/, '');
    const headers = this._tok ? { Authorization: 'Bearer ' + this._tok } : {};
    let url;
    let init = { headers };
    switch (frame.op) {
      case 'ping':
        return { op: 'ok' };
      case 'publish':
        url = base + '/api/publish/' + encodeURIComponent(frame.channel);
        init = { method: 'POST', headers: { ...headers, 'Content-Type': 'application/json' }, body: JSON.stringify(frame.data) };
        break;
      case 'presence':
      case 'presence_stats':
        url = presenceRequest(base, frame);
        break;
      case 'history': {
        const q = new URLSearchParams();
        if (frame.since) q.set('since', frame.since);
        if (frame.limit) q.set('limit', String(frame.limit));
        if (frame.reverse) q.set('reverse', 'true');
        url = base + '/api/history/' + encodeURIComponent(frame.channel) + (q.toString() ? '?' + q : '');
        break;
      }
      default:
        throw new PubMeshError('bad_request', `pubmesh: ${frame.op} is not available over SSE`);
    }
    let resp;
    try {
      resp = await fetch(url, init);
    } catch (e) {
      throw new PubMeshError('disconnected', 'pubmesh: ' + e);
    }
    let body = {};
    try {
      body = await resp.json();
    } catch {
      // no JSON body
    }
    if (!resp.ok) throw new PubMeshError(body.code || 'unavailable', body.message || `pubmesh: HTTP ${resp.status}`);
    if (frame.op === 'history' || frame.op === 'presence' || frame.op === 'presence_stats') return { op: frame.op, ...body };
    return { op: 'ok' };
  }

  /** Close for good (until connect() is called again). */
  close() {
    this._stopped = true;
    this._gen++; // a dial fetching its token stops there
    this._dialing = false;
    clearTimeout(this._retry);
    this._retry = null;
    this._stopIdleCheck();
    for (const ch of this._channels.values()) {
      clearTimeout(ch.retry);
      ch.retry = null;
    }
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    clearTimeout(this._reopen);
    this._reopen = null;
    const ws = this._ws;
    if (ws) {
      ws.close(1000, 'bye');
    } else {
      if (this._es) this._closed(this._es, 1000, 'bye');
      this._setState('closed');
    }
    this._failWaiters(new PubMeshError('closed', 'pubmesh: client closed'));
  }
}

// jwtExp is the exp of a JWT in ms, or 0 (not a JWT, no exp).
function jwtExp(tok) {
  const parts = typeof tok === 'string' ? tok.split('.') : [];
  if (parts.length !== 3) return 0;
  try {
    const b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    const claims = JSON.parse(atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4)));
    return typeof claims.exp === 'number' ? claims.exp * 1000 : 0;
  } catch {
    return 0;
  }
}

/** connect(opts) is new PubMesh(opts). */
export function connect(opts) {
  return new PubMesh(opts);
}
