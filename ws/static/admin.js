// The pubmesh admin page: polls /admin/api/overview every 2 s once logged
// in, drains nodes and edits the cluster configuration. Every value from
// the server is put in the page as text (textContent), never as HTML.
'use strict';

const $ = (id) => document.getElementById(id);
const POLL_MS = 2000;
let pollTimer = null;
let configBase = null; // the revision the editor's document was read at
let armedDrain = null; // the node whose drain button asks for confirmation

// api calls the admin API with the session cookie (same origin); a 401
// shows the login form again.
async function api(path, opts = {}) {
  const resp = await fetch(path, Object.assign({ credentials: 'same-origin', cache: 'no-store' }, opts));
  let body = null;
  try { body = await resp.json(); } catch (e) { /* 204 or not JSON */ }
  if (resp.status === 401) {
    showLogin(body && body.error);
    throw new Error('login required');
  }
  return { status: resp.status, body };
}

function post(path, obj) {
  return api(path, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(obj) });
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells) {
  const tr = document.createElement('tr');
  for (const c of cells) {
    if (c instanceof Node) { const td = document.createElement('td'); td.appendChild(c); tr.appendChild(td); }
    else tr.appendChild(el('td', c === undefined || c === '' ? '-' : c));
  }
  return tr;
}

function showLogin(msg) {
  clearInterval(pollTimer);
  pollTimer = null;
  $('app').classList.add('hidden');
  $('logout-btn').classList.add('hidden');
  $('login').classList.remove('hidden');
  document.body.dataset.state = 'login';
  if (msg && msg !== 'login required') $('login-error').textContent = msg;
}

function showApp() {
  $('login').classList.add('hidden');
  $('app').classList.remove('hidden');
  $('logout-btn').classList.remove('hidden');
  document.body.dataset.state = 'app';
  loadConfig();
  refresh();
  if (!pollTimer) pollTimer = setInterval(refresh, POLL_MS);
}

async function refresh() {
  let r;
  try { r = await api('/admin/api/overview'); } catch (e) { return; }
  if (r.status !== 200) { $('nodes-error').textContent = (r.body && r.body.error) || ('HTTP ' + r.status); return; }
  render(r.body);
}

function render(o) {
  $('where').textContent = 'cluster ' + o.cluster + ' · gateway ' + o.gateway;
  $('updated').textContent = 'updated ' + new Date(o.at).toLocaleTimeString();
  $('nodes-error').textContent = o.stale ? 'etcd unreachable, last known nodes: ' + o.error : '';

  const rate = $('rate');
  rate.replaceChildren();
  for (const [k, label] of [['published', 'published'], ['received', 'received from the cluster'], ['delivered', 'delivered to clients']]) {
    const d = el('div');
    d.appendChild(el('b', (o.rate[k] || 0).toFixed(1)));
    d.appendChild(el('span', label, 'muted'));
    d.dataset.rate = k;
    rate.appendChild(d);
  }

  const nodes = $('nodes');
  nodes.replaceChildren();
  for (const n of o.nodes) {
    const state = el('span', n.state, 'state ' + n.state);
    const btn = el('button', armedDrain === n.id ? 'Confirm drain' : 'Drain', 'danger drain' + (armedDrain === n.id ? ' confirm' : ''));
    btn.type = 'button';
    btn.dataset.node = n.id;
    btn.disabled = n.state === 'draining';
    btn.addEventListener('click', () => drain(n.id));
    const mem = n.used_memory_human ? n.used_memory_human + ' / ' + (n.maxmemory_human && n.maxmemory_human !== '0B' ? n.maxmemory_human : 'no limit') : (n.info_error ? 'INFO: ' + n.info_error : '');
    const tr = row([n.id, n.addr, state, n.incarnation, (n.run_id || '').slice(0, 12), n.redis_version, mem, n.connected_clients, n.config_revision, btn]);
    tr.dataset.node = n.id;
    tr.dataset.state = n.state;
    nodes.appendChild(tr);
  }
  if (o.nodes.length === 0) nodes.appendChild(row(['no live nodes']));

  const gws = $('gateways');
  gws.replaceChildren();
  for (const g of o.gateways) {
    const conns = Object.entries(g.connections || {}).map(([t, c]) => t + ' ' + c).join(', ') || '0';
    const tr = row([g.id, g.url, conns, g.subscriptions, g.channels]);
    tr.dataset.gateway = g.id;
    gws.appendChild(tr);
  }

  $('config-current').textContent = '(current revision ' + o.config_revision + ')';
  const cls = $('clients');
  cls.replaceChildren();
  for (const c of o.clients) {
    const tr = row([c.id, c.role, c.host, c.config_revision]);
    tr.lastChild.className = 'rev';
    if (c.config_revision !== o.config_revision) tr.className = 'skew';
    tr.dataset.client = c.id;
    cls.appendChild(tr);
  }

  $('channels-from').textContent = '(' + o.channels_total + ' in all, counts from ' + o.channels_from + ')';
  const chs = $('channels');
  chs.replaceChildren();
  for (const c of o.channels) {
    const tr = row([c.name, c.subscribers]);
    tr.dataset.channel = c.name;
    chs.appendChild(tr);
  }
}

// drain asks for a second click before it requests the drain.
async function drain(id) {
  if (armedDrain !== id) {
    armedDrain = id;
    $('drain-result').textContent = 'Click "Confirm drain" to drain node ' + id + ': its agent stops taking publishes, then leaves.';
    $('drain-result').className = '';
    for (const b of document.querySelectorAll('button.drain')) {
      const on = b.dataset.node === id;
      b.textContent = on ? 'Confirm drain' : 'Drain';
      b.classList.toggle('confirm', on);
    }
    return;
  }
  armedDrain = null;
  let r;
  try { r = await post('/admin/api/nodes/' + encodeURIComponent(id) + '/drain', {}); } catch (e) { return; }
  const res = $('drain-result');
  if (r.status === 202) { res.textContent = 'drain of node ' + id + ' requested'; res.className = 'ok'; }
  else { res.textContent = 'drain of node ' + id + ' failed: ' + ((r.body && r.body.error) || 'HTTP ' + r.status); res.className = 'error'; }
  refresh();
}

function result(text, cls) {
  const p = $('config-result');
  p.textContent = text;
  p.className = cls || '';
}

async function loadConfig() {
  let r;
  try { r = await api('/admin/api/config'); } catch (e) { return; }
  if (r.status !== 200) { result((r.body && r.body.error) || 'HTTP ' + r.status, 'error'); return; }
  configBase = r.body.revision;
  $('config-rev').textContent = String(configBase);
  $('config-doc').value = r.body.document;
  result(r.body.problems ? 'the stored document does not validate:\n' + r.body.problems.join('\n') : '');
}

function edit() {
  return { document: $('config-doc').value, revision: configBase, comment: $('config-comment').value };
}

async function preview() {
  let r;
  try { r = await post('/admin/api/config/preview', edit()); } catch (e) { return; }
  const p = r.body || {};
  if (r.status !== 200) { result(p.error || 'HTTP ' + r.status, 'error'); return; }
  if (!p.valid) { result('not valid:\n' + p.problems.join('\n'), 'error'); return; }
  let text = p.changes.length ? 'changes in effect:\n' + p.changes.join('\n') : 'no change in effect';
  if (p.conflict) text += '\n\nwarning: the configuration is now at revision ' + p.current_revision + ', not ' + configBase + ': apply will be refused; reload first';
  result(text, p.conflict ? 'error' : 'ok');
}

async function apply() {
  let r;
  try { r = await post('/admin/api/config/apply', edit()); } catch (e) { return; }
  const p = r.body || {};
  if (r.status === 200) {
    await loadConfig();
    result('revision ' + p.revision + ' written (was ' + p.previous + ')\n' + p.changes.join('\n'), 'ok');
    return;
  }
  result((p.error || 'HTTP ' + r.status) + (p.problems ? '\n' + p.problems.join('\n') : ''), 'error');
}

async function login(ev) {
  ev.preventDefault();
  $('login-error').textContent = '';
  const resp = await fetch('/admin/login', {
    method: 'POST', credentials: 'same-origin',
    body: new URLSearchParams({ password: $('password').value }),
  });
  $('password').value = '';
  if (resp.status === 204) { showApp(); return; }
  let msg = 'HTTP ' + resp.status;
  try { msg = (await resp.json()).error; } catch (e) { /* keep the status */ }
  $('login-error').textContent = msg;
}

async function logout() {
  try { await post('/admin/logout', {}); } catch (e) { /* shown as the login form anyway */ }
  showLogin();
}

document.addEventListener('DOMContentLoaded', async () => {
  $('login-form').addEventListener('submit', login);
  $('logout-btn').addEventListener('click', logout);
  $('config-reload').addEventListener('click', loadConfig);
  $('config-preview').addEventListener('click', preview);
  $('config-apply').addEventListener('click', apply);
  // Logged in already (a valid cookie)? The overview says.
  try {
    const r = await api('/admin/api/overview');
    if (r.status === 200) { showApp(); render(r.body); }
  } catch (e) { /* showLogin did it */ }
});
