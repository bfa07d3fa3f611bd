// pubmesh-presence.js: presence for the pubmesh JavaScript client
// (/pubmesh.js imports it; docs/protocol.md, Presence). An ES module with no
// dependencies, served next to /pubmesh.js.
//
//   import { PubMesh } from '/pubmesh.js';
//   const pm = new PubMesh({ info: { name: 'Alice' } }); // shown in presence
//   await pm.subscribe('room.1');
//   const who = await pm.presence('room.1');       // [{client, user, gateway, connected_at, info}]
//   const n = await pm.presenceStats('room.1');    // {clients, users}
//   pm.on('join', (e) => console.log(e.user, 'joined', e.channel));
//   const live = pm.watchPresence('room.1', (members) => render([...members.values()]));
//
// join and leave come only to subscribers of a channel whose namespace has
// join_leave: true; presence and presenceStats need presence: true (else
// they reject with 'no_presence').

/**
 * presenceEvent turns a join or leave frame into the event the client
 * emits: the channel and the entry's fields ({channel, client, user,
 * gateway, connected_at, info}), as presence() lists them.
 */
export function presenceEvent(f) {
  return { channel: f.channel, ...(f.info || {}) };
}

/**
 * presenceRequest is the HTTP request that answers a presence or
 * presence_stats op (over SSE, which has no ops): GET
 * /api/presence/{channel}[/stats] on base.
 */
export function presenceRequest(base, frame) {
  const stats = frame.op === 'presence_stats';
  return base + '/api/presence/' + encodeURIComponent(frame.channel) + (stats ? '/stats' : '');
}

/**
 * PresenceTracker keeps the live membership of one channel: an initial
 * presence read, then every join and leave. It reads again after each
 * (re)subscribe of the channel, since events are missed while the client is
 * disconnected. Events that come while a read is in flight are applied, in
 * order, on top of its answer, so that none is lost between the two. The
 * channel must be subscribed (by the app) for join and leave to arrive.
 */
export class PresenceTracker {
  /**
   * @param {object} pm a PubMesh client.
   * @param {string} channel the channel (its namespace has presence and join_leave).
   * @param {function(Map, object)} [onChange] called with members (client id ->
   *   entry) and what changed: {op: 'presence'} after a read, {op: 'join'|'leave',
   *   entry}, or {op: 'error', error} when a read failed.
   */
  constructor(pm, channel, onChange) {
    this.pm = pm;
    this.channel = channel;
    /** client id -> {client, user, gateway, connected_at, info} */
    this.members = new Map();
    /** the last read's error (PubMeshError), or null */
    this.error = null;
    this._handlers = new Set();
    if (onChange) this._handlers.add(onChange);
    this._buffer = null; // events during a read, or null
    this._gen = 0;
    this._off = [
      pm.on('join', (e) => this._event('join', e)),
      pm.on('leave', (e) => this._event('leave', e)),
      pm.on('subscribed', (ch) => { if (ch === channel) this.refresh(); }),
    ];
    if (pm.isActive(channel)) this.refresh();
  }

  /** Listen to changes; returns a function that removes the listener. */
  onChange(fn) {
    this._handlers.add(fn);
    return () => this._handlers.delete(fn);
  }

  /** Distinct non-empty subjects among the members. */
  get users() {
    return new Set([...this.members.values()].map((e) => e.user).filter(Boolean));
  }

  /** Read the channel's presence again. */
  async refresh() {
    const gen = ++this._gen;
    this._buffer = [];
    let list;
    try {
      list = await this.pm.presence(this.channel);
    } catch (error) {
      if (gen !== this._gen) return;
      this._buffer = null;
      this.error = error;
      this._changed({ op: 'error', error });
      return;
    }
    if (gen !== this._gen) return; // a newer read (or close) took over
    const buffered = this._buffer;
    this._buffer = null;
    this.error = null;
    this.members = new Map(list.map((e) => [e.client, e]));
    for (const [op, e] of buffered) this._apply(op, e);
    this._changed({ op: 'presence' });
  }

  _event(op, e) {
    if (e.channel !== this.channel) return;
    if (this._buffer) {
      this._buffer.push([op, e]);
      return;
    }
    this._apply(op, e);
    this._changed({ op, entry: e });
  }

  _apply(op, e) {
    const { channel, ...entry } = e;
    if (op === 'join') this.members.set(entry.client, entry);
    else this.members.delete(entry.client);
  }

  _changed(what) {
    for (const fn of this._handlers) {
      try {
        fn(this.members, what);
      } catch (err) {
        setTimeout(() => { throw err; });
      }
    }
  }

  /** Stop tracking. */
  close() {
    this._gen++;
    this._buffer = null;
    for (const off of this._off) off();
    this._off = [];
    this._handlers.clear();
  }
}
