// flick's dashboard: one page, views chosen by the URL's #fragment, every
// figure read from the native /v1/ API with the session's CSRF token
// (X-Flick-CSRF, from the page's <meta>) beside the session cookie.
// Preact + htm (no build step); uPlot (a global from its own script) draws
// the charts.

import { h, render } from './vendor/preact.mjs';
import { useState, useEffect, useRef } from './vendor/hooks.mjs';
import htm from './vendor/htm.mjs';

const html = htm.bind(h);
const CSRF = document.querySelector('meta[name="flick-csrf"]').content;

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// A /v1/ (or /fn/) call as the logged-in session. A 401 means the session
// ended (logout elsewhere, restart, expiry): back to the login page.
async function api(path, opts = {}) {
  const r = await fetch(path, {
    ...opts,
    credentials: 'same-origin',
    headers: { ...(opts.headers || {}), 'X-Flick-CSRF': CSRF },
  });
  const text = await r.text();
  if (r.status === 401) {
    location.assign('/ui/login');
    throw new ApiError(401, 'session ended: log in again');
  }
  let body = text;
  try { body = JSON.parse(text); } catch (_) { /* not JSON */ }
  if (!r.ok) {
    const msg = (body && body.error && body.error.message) || text || r.statusText;
    throw new ApiError(r.status, msg);
  }
  return body;
}

// --- small helpers ---------------------------------------------------------

const fmtTime = (ms) => (ms ? new Date(ms).toLocaleString() : '–');
const fmtMs = (ms) => (ms == null ? '–' : ms < 10 ? ms.toFixed(2) + ' ms' : Math.round(ms) + ' ms');
const fmtNum = (n, digits = 3) => (n == null ? '–' : Number(n).toLocaleString(undefined, { maximumFractionDigits: digits }));
const fmtBytes = (b) => (b == null ? '–' : b >= 1 << 20 ? (b / (1 << 20)).toFixed(1) + ' MiB' : b >= 1024 ? (b / 1024).toFixed(1) + ' KiB' : b + ' B');
const enc = encodeURIComponent;

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, '');
  const [path, query = ''] = raw.split('?');
  return { parts: path.split('/').filter(Boolean).map(decodeURIComponent), query: new URLSearchParams(query) };
}

function useHash() {
  const [hash, setHash] = useState(location.hash);
  useEffect(() => {
    const on = () => setHash(location.hash);
    window.addEventListener('hashchange', on);
    return () => window.removeEventListener('hashchange', on);
  }, []);
  return hash;
}

// Loads `fn()` when `deps` change; `reload` runs it again.
function useLoad(fn, deps) {
  const [state, setState] = useState({ loading: true });
  const [tick, setTick] = useState(0);
  useEffect(() => {
    let live = true;
    setState((s) => ({ ...s, loading: true }));
    fn().then(
      (data) => live && setState({ data }),
      (error) => live && setState({ error }),
    );
    return () => { live = false; };
  }, [...deps, tick]);
  return [state, () => setTick((t) => t + 1)];
}

function Loading({ state, children }) {
  if (state.error) return html`<p class="error" role="alert">${state.error.message}</p>`;
  if (state.data === undefined) return html`<p class="muted">Loading…</p>`;
  return children(state.data);
}

function Status({ status }) {
  return html`<span class=${'badge ' + (status === 'success' ? 'ok' : 'bad')}>${status}</span>`;
}

// --- functions -------------------------------------------------------------

async function loadFunctions() {
  const [fns, triggers, instances] = await Promise.all([
    api('/v1/functions'),
    api('/v1/triggers').catch(() => ({ triggers: [] })),
    api('/v1/instances').catch(() => ({ instances: [] })),
  ]);
  return { functions: fns.functions, triggers: triggers.triggers || [], instances: instances.instances || [] };
}

function stateText(state) {
  if (state == null) return '';
  if (typeof state === 'string') return state;
  return state.state || Object.keys(state)[0] || JSON.stringify(state);
}

function FunctionsList() {
  const [state, reload] = useLoad(loadFunctions, []);
  return html`<section>
    <h1>Functions <button class="small" onClick=${reload}>Refresh</button></h1>
    <${Loading} state=${state}>${({ functions, triggers, instances }) =>
      functions.length === 0
        ? html`<p class="muted">No functions yet: deploy one with <code>flick deploy</code>.</p>`
        : html`<table id="functions">
          <thead><tr><th>Name</th><th>Runtime</th><th>Revision</th><th>Triggers</th><th>State</th><th>Updated</th></tr></thead>
          <tbody>${functions.map((f) => {
            const ts = triggers.filter((t) => t.function === f.name);
            const pools = instances.filter((p) => p.function === f.name);
            const running = pools.reduce((n, p) => n + p.instances, 0);
            const busy = pools.reduce((n, p) => n + p.inflight, 0);
            return html`<tr data-function=${f.name}>
              <td><a href=${'#/functions/' + enc(f.name)}>${f.name}</a>${f.public ? html` <span class="badge">public</span>` : ''}</td>
              <td>${f.runtime}</td>
              <td>r${f.current_revision}${f.latest_revision !== f.current_revision ? html` <span class="muted">(latest r${f.latest_revision})</span>` : ''}</td>
              <td>${ts.length === 0 ? html`<span class="muted">none</span>` : ts.map((t) => html`<div>${t.name} <span class="muted">${t.type} · ${stateText(t.state)} · fired ${t.fired}</span></div>`)}</td>
              <td>${running === 0 ? html`<span class="muted">idle (0 instances)</span>` : `${running} instance${running > 1 ? 's' : ''}, ${busy} busy`}</td>
              <td>${fmtTime(f.updated_ms)}</td>
            </tr>`;
          })}</tbody></table>`}<//>
  </section>`;
}

function FunctionPage({ name }) {
  const [state, reload] = useLoad(async () => {
    const [info, revs] = await Promise.all([
      api('/v1/functions/' + enc(name)),
      api('/v1/functions/' + enc(name) + '/revisions'),
    ]);
    return { info, revs };
  }, [name]);
  const [msg, setMsg] = useState(null);

  async function rollback(rev) {
    setMsg(null);
    try {
      const r = await api('/v1/functions/' + enc(name) + '/rollback', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ revision: rev }),
      });
      setMsg({ ok: true, text: `Now serving revision ${r.revision}.` });
      reload();
    } catch (e) {
      setMsg({ ok: false, text: e.message });
    }
  }

  return html`<section>
    <p><a href="#/functions">← Functions</a></p>
    <h1>${name}</h1>
    <${Loading} state=${state}>${({ info, revs }) => html`
      <div class="grid">
        <div class="card">
          <h2>Configuration</h2>
          <${Config} info=${info} />
        </div>
        <div class="card">
          <h2>Environment</h2>
          ${info.env_names.length === 0
            ? html`<p class="muted">No variables.</p>`
            : html`<p class="muted">Names only: values are never sent to the dashboard.</p>
                   <ul id="env-names">${info.env_names.map((n) => html`<li><code>${n}</code></li>`)}</ul>`}
          <h2>Queue</h2>
          <p>${info.queue.ready} waiting · ${info.queue.leased} running · ${info.queue.dead} dead letters</p>
          <p><a href=${'#/activations?function=' + enc(name)}>Activations of ${name} →</a>
             · <a href=${'#/charts/' + enc(name)}>Charts →</a></p>
        </div>
      </div>
      <div class="card">
        <h2>Revisions</h2>
        ${msg && html`<p class=${msg.ok ? 'notice' : 'error'} role="status">${msg.text}</p>`}
        <table id="revisions">
          <thead><tr><th>Revision</th><th>Hash</th><th>Deployed</th><th>Code</th><th></th></tr></thead>
          <tbody>${revs.revisions.map((r) => html`<tr data-revision=${r.number}>
            <td>r${r.number}${r.number === revs.current_revision ? html` <span class="badge ok">current</span>` : ''}</td>
            <td><code>${r.hash.replace('sha256:', '').slice(0, 12)}</code></td>
            <td>${fmtTime(r.created_ms)}</td>
            <td>${fmtBytes(r.code_size)}</td>
            <td>${r.number !== revs.current_revision
              ? html`<button class="small" data-rollback=${r.number} onClick=${() => rollback(r.number)}>Roll back to r${r.number}</button>`
              : ''}</td>
          </tr>`)}</tbody>
        </table>
      </div>
      <${InvokePanel} name=${name} />
    `}<//>
  </section>`;
}

function Config({ info }) {
  const m = info.manifest || {};
  const rows = Object.entries(m).filter(([k]) => k !== 'env' && k !== 'name');
  return html`<table class="kv" id="config"><tbody>
    <tr><th>URL</th><td><code>${info.url}</code></td></tr>
    <tr><th>Runtime</th><td>${info.runtime}</td></tr>
    <tr><th>Revision</th><td>r${info.current_revision} of ${info.latest_revision}</td></tr>
    ${rows.map(([k, v]) => html`<tr><th>${k}</th><td>${typeof v === 'object' && v !== null
      ? html`<pre>${JSON.stringify(v, null, 2)}</pre>` : String(v)}</td></tr>`)}
  </tbody></table>`;
}

// --- invoke panel ----------------------------------------------------------

function parseHeaders(text) {
  const out = [];
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    const at = line.indexOf(':');
    if (at <= 0) throw new Error(`header line "${line}" is not "Name: value"`);
    out.push([line.slice(0, at).trim(), line.slice(at + 1).trim()]);
  }
  return out;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function InvokePanel({ name }) {
  const [method, setMethod] = useState('POST');
  const [path, setPath] = useState('/');
  const [headers, setHeaders] = useState('Content-Type: application/json');
  const [body, setBody] = useState('{}');
  const [result, setResult] = useState(null);
  const [busy, setBusy] = useState(false);

  async function send(ev) {
    ev.preventDefault();
    setBusy(true);
    setResult(null);
    try {
      const hs = new Headers();
      for (const [n, v] of parseHeaders(headers)) hs.append(n, v);
      hs.set('X-Flick-CSRF', CSRF);
      const sub = path.startsWith('/') ? path : '/' + path;
      const t0 = performance.now();
      const r = await fetch('/fn/' + enc(name) + (sub === '/' ? '' : sub), {
        method,
        headers: hs,
        body: method === 'GET' || method === 'HEAD' ? undefined : body,
        credentials: 'same-origin',
      });
      const text = await r.text();
      const elapsed = performance.now() - t0;
      const id = r.headers.get('x-flick-activation-id');
      const res = { status: r.status, statusText: r.statusText, headers: [...r.headers.entries()], body: text, elapsed, id };
      setResult(res);
      if (id) {
        // The record is written when the call ends, a moment after the answer.
        for (let i = 0; i < 25; i++) {
          try {
            const a = await api('/v1/activations/' + enc(id));
            setResult({ ...res, activation: a });
            break;
          } catch (e) {
            if (e.status !== 404) { setResult({ ...res, activationError: e.message }); break; }
            await sleep(200);
          }
        }
      }
    } catch (e) {
      setResult({ error: e.message });
    } finally {
      setBusy(false);
    }
  }

  return html`<div class="card" id="invoke">
    <h2>Invoke</h2>
    <form onSubmit=${send} class="invoke-form">
      <div class="row">
        <select name="method" value=${method} onChange=${(e) => setMethod(e.target.value)}>
          ${['GET', 'POST', 'PUT', 'PATCH', 'DELETE'].map((m) => html`<option value=${m}>${m}</option>`)}
        </select>
        <span class="prefix">/fn/${name}</span>
        <input name="path" value=${path} onInput=${(e) => setPath(e.target.value)} />
        <button type="submit" disabled=${busy}>${busy ? 'Running…' : 'Send'}</button>
      </div>
      <label>Headers (one "Name: value" per line)
        <textarea name="headers" rows="2" value=${headers} onInput=${(e) => setHeaders(e.target.value)}></textarea></label>
      <label>Body
        <textarea name="body" rows="4" value=${body} onInput=${(e) => setBody(e.target.value)}></textarea></label>
    </form>
    ${result && html`<div class="result" id="invoke-result">
      ${result.error
        ? html`<p class="error" role="alert">${result.error}</p>`
        : html`
          <p><span class="badge ${result.status < 400 ? 'ok' : 'bad'}" id="invoke-status">${result.status} ${result.statusText}</span>
             <span class="muted"> in ${fmtMs(result.elapsed)}</span>
             ${result.id && html` · activation <a id="invoke-activation" href=${'#/activations/' + enc(result.id)}>${result.id}</a>`}</p>
          ${result.activation && html`<p class="muted" id="invoke-timing">queue ${fmtMs(result.activation.wait_ms)} · init ${fmtMs(result.activation.init_ms)}
             · exec ${fmtMs(result.activation.exec_ms)} · total ${fmtMs(result.activation.duration_ms)} · ${result.activation.cold ? 'cold' : 'warm'}</p>`}
          <h3>Response body</h3>
          <pre id="invoke-body">${result.body}</pre>
          <details><summary>Response headers (${result.headers.length})</summary>
            <table class="kv"><tbody>${result.headers.map(([n, v]) => html`<tr><th>${n}</th><td>${v}</td></tr>`)}</tbody></table>
          </details>
          <h3>Logs</h3>
          ${result.activation ? html`<${Logs} logs=${result.activation.logs} truncated=${result.activation.logs_truncated} id="invoke-logs" />`
            : result.activationError ? html`<p class="error">${result.activationError}</p>`
            : result.id ? html`<p class="muted">Waiting for the record…</p>` : html`<p class="muted">No activation.</p>`}`}
    </div>`}
  </div>`;
}

function Logs({ logs, truncated, id }) {
  if (!logs || logs.length === 0) return html`<p class="muted" id=${id}>No output.</p>`;
  return html`<pre class="logs" id=${id}>${logs.map((l) => html`<span class=${'log ' + l.stream}><span class="muted">${new Date(l.ts_ms).toISOString().slice(11, 23)} ${l.stream}</span> ${l.text}
</span>`)}${truncated ? html`<span class="muted">… (truncated)</span>` : ''}</pre>`;
}

// --- activations -----------------------------------------------------------

const CAUSES = ['http', 'async', 'cron', 'mqtt', 'nats', 'cloudevent', 'sequence', 'redrive', 'trigger'];
const STATUSES = ['success', 'error', 'timeout', 'out_of_memory', 'platform_error'];

function Activations({ query }) {
  const f = { function: query.get('function') || '', status: query.get('status') || '', cause: query.get('cause') || '', cold: query.get('cold') || '' };
  const [fns] = useLoad(() => api('/v1/functions'), []);
  const [state, reload] = useLoad(async () => {
    const q = new URLSearchParams({ limit: '200' });
    if (f.function) q.set('function', f.function);
    if (f.cause) q.set('cause', f.cause);
    const r = await api('/v1/activations?' + q);
    // Status and cold are filtered here: the API filters by function and cause.
    return r.activations.filter((a) => (!f.status || a.status === f.status) && (!f.cold || String(a.cold) === (f.cold === 'cold' ? 'true' : 'false')));
  }, [f.function, f.status, f.cause, f.cold]);

  function set(key, value) {
    const q = new URLSearchParams(query);
    if (value) q.set(key, value); else q.delete(key);
    location.hash = '#/activations' + (q.toString() ? '?' + q : '');
  }
  const select = (key, options, label) => html`<label>${label}
    <select name=${key} value=${f[key]} onChange=${(e) => set(key, e.target.value)}>
      <option value="">any</option>${options.map((o) => html`<option value=${o}>${o}</option>`)}
    </select></label>`;

  return html`<section>
    <h1>Activations <button class="small" onClick=${reload}>Refresh</button></h1>
    <div class="filters">
      ${select('function', fns.data ? fns.data.functions.map((x) => x.name) : f.function ? [f.function] : [], 'Function')}
      ${select('status', STATUSES, 'Status')}
      ${select('cause', CAUSES, 'Cause')}
      ${select('cold', ['cold', 'warm'], 'Start')}
    </div>
    <${Loading} state=${state}>${(list) => list.length === 0 ? html`<p class="muted">No activations match.</p>` : html`
      <table id="activations">
        <thead><tr><th>Activation</th><th>Function</th><th>Status</th><th>HTTP</th><th>Cause</th><th>Start</th><th>Started</th><th>Duration</th></tr></thead>
        <tbody>${list.map((a) => html`<tr data-activation=${a.id}>
          <td><a href=${'#/activations/' + enc(a.id)}><code>${a.id}</code></a></td>
          <td>${a.function} <span class="muted">r${a.revision}</span></td>
          <td><${Status} status=${a.status} /></td>
          <td>${a.http_status}</td>
          <td>${a.cause}${a.trigger ? html` <span class="muted">${a.trigger}</span>` : ''}</td>
          <td>${a.cold ? (a.prewarmed ? 'cold (prewarmed)' : 'cold') : 'warm'}</td>
          <td>${fmtTime(a.start_ms)}</td>
          <td>${fmtMs(a.duration_ms)}</td>
        </tr>`)}</tbody>
      </table>`}<//>
  </section>`;
}

function ActivationPage({ id }) {
  const [state] = useLoad(() => api('/v1/activations/' + enc(id)), [id]);
  return html`<section>
    <p><a href="#/activations">← Activations</a></p>
    <h1><code>${id}</code></h1>
    <${Loading} state=${state}>${(a) => html`
      <div class="grid">
        <div class="card"><table class="kv" id="activation"><tbody>
          <tr><th>Function</th><td><a href=${'#/functions/' + enc(a.function)}>${a.function}</a> r${a.revision}</td></tr>
          <tr><th>Status</th><td><${Status} status=${a.status} /> HTTP ${a.http_status}</td></tr>
          <tr><th>Cause</th><td>${a.cause}${a.trigger ? ' · ' + a.trigger : ''} · attempt ${a.attempt}${a.max_attempts ? ' of ' + a.max_attempts : ''}</td></tr>
          <tr><th>Started</th><td>${fmtTime(a.start_ms)}</td></tr>
          <tr><th>Timing</th><td>queue ${fmtMs(a.wait_ms)} · init ${fmtMs(a.init_ms)} · exec ${fmtMs(a.exec_ms)} · total ${fmtMs(a.duration_ms)}</td></tr>
          <tr><th>Start</th><td>${a.cold ? (a.prewarmed ? 'cold (prewarmed stem cell)' : 'cold') : 'warm'}</td></tr>
          ${a.memory_peak_bytes != null && html`<tr><th>Memory peak</th><td>${fmtBytes(a.memory_peak_bytes)}${a.memory_mb ? ` of ${a.memory_mb} MiB` : ''}</td></tr>`}
          ${a.cpu_ms != null && html`<tr><th>CPU</th><td>${fmtMs(a.cpu_ms)}</td></tr>`}
          ${a.parent && html`<tr><th>Parent</th><td><a href=${'#/activations/' + enc(a.parent)}>${a.parent}</a></td></tr>`}
          ${a.trace_id && html`<tr><th>Trace</th><td><code>${a.trace_id}</code></td></tr>`}
        </tbody></table></div>
        <div class="card">
          <h2>Response</h2>
          <pre id="activation-response">${a.response}${a.response_truncated ? '\n… (truncated)' : ''}</pre>
        </div>
      </div>
      <div class="card"><h2>Logs</h2><${Logs} logs=${a.logs} truncated=${a.logs_truncated} id="activation-logs" /></div>
    `}<//>
  </section>`;
}

// --- charts ----------------------------------------------------------------

const SERIES = [
  { title: 'Requests per second', id: 'rate', lines: [['rate', (p, step) => p.invocations / step]] },
  { title: 'Latency (ms)', id: 'latency', lines: [['p50', (p) => p.p50_ms], ['p99', (p) => p.p99_ms]] },
  { title: 'Errors', id: 'errors', lines: [['errors', (p) => p.errors]] },
  { title: 'Cold starts', id: 'cold', lines: [['cold starts', (p) => p.cold_starts]] },
  { title: 'Instances', id: 'instances', lines: [['instances', (p) => p.instances]] },
  { title: 'GB-seconds', id: 'gbs', lines: [['GB-s', (p) => p.gb_s]] },
];
const COLORS = ['#2563eb', '#dc2626', '#059669'];

function Chart({ spec, points, step }) {
  const el = useRef(null);
  useEffect(() => {
    if (!window.uPlot || !el.current) return undefined;
    const xs = points.map((p) => p.t_ms / 1000);
    const data = [xs, ...spec.lines.map(([, f]) => points.map((p) => { const v = f(p, step); return v == null ? null : v; }))];
    const opts = {
      width: Math.max(280, el.current.clientWidth || 400),
      height: 180,
      legend: { show: true },
      series: [{}, ...spec.lines.map(([label], i) => ({ label, stroke: COLORS[i], width: 1.5 }))],
      axes: [{}, { size: 50 }],
    };
    const plot = new window.uPlot(opts, data, el.current);
    return () => plot.destroy();
  }, [points, step]);
  return html`<div class="card chart" id=${'chart-' + spec.id}><h3>${spec.title}</h3><div ref=${el}></div></div>`;
}

function Charts({ name, query }) {
  const since = query.get('since') || '1h';
  const [fns] = useLoad(() => api('/v1/functions'), []);
  const [state, reload] = useLoad(async () => {
    const q = new URLSearchParams({ since, step: since === '1h' ? '60s' : since === '6h' ? '300s' : '900s' });
    if (name) q.set('function', name);
    try {
      return await api('/v1/stats/series?' + q);
    } catch (e) {
      // An older flick (or none yet recorded): no series to show.
      if (e.status === 404) return { none: true };
      throw e;
    }
  }, [name, since]);
  const go = (fn, s) => { location.hash = '#/charts' + (fn ? '/' + enc(fn) : '') + '?since=' + s; };
  return html`<section>
    <h1>Charts: ${name || 'the host'} <button class="small" onClick=${reload}>Refresh</button></h1>
    <div class="filters">
      <label>Function <select name="function" value=${name || ''} onChange=${(e) => go(e.target.value, since)}>
        <option value="">the host (all functions)</option>
        ${(fns.data ? fns.data.functions.map((f) => f.name) : name ? [name] : []).map((n) => html`<option value=${n}>${n}</option>`)}
      </select></label>
      <label>Since <select name="since" value=${since} onChange=${(e) => go(name, e.target.value)}>
        ${['1h', '6h', '24h'].map((s) => html`<option value=${s}>${s}</option>`)}
      </select></label>
    </div>
    <${Loading} state=${state}>${(r) => r.none || !r.points || r.points.length === 0
      ? html`<p class="muted" id="charts-empty">No data: no series recorded for this range.</p>`
      : html`<div class="charts" id="charts">${SERIES.map((s) => html`<${Chart} spec=${s} points=${r.points} step=${r.step_s || 60} />`)}</div>`}<//>
  </section>`;
}

// --- usage -----------------------------------------------------------------

function Usage({ query }) {
  const since = query.get('since') || '30d';
  const [state] = useLoad(async () => {
    try {
      return await api('/v1/usage?since=' + enc(since));
    } catch (e) {
      if (e.status === 404) return { none: true };
      throw e;
    }
  }, [since]);
  // Serverless bills are fractions of a cent: below one, three significant digits.
  const money = (v, cur) => {
    if (v == null) return '–';
    const opts = { style: 'currency', currency: cur || 'USD' };
    if (v !== 0 && Math.abs(v) < 0.01) opts.maximumSignificantDigits = 3;
    return Number(v).toLocaleString(undefined, opts);
  };
  const row = (label, u, cur) => html`<tr>
    <td>${label}</td><td>${fmtNum(u.invocations, 0)}</td><td>${fmtNum(u.errors, 0)}</td><td>${fmtNum(u.cold_starts, 0)}</td>
    <td>${fmtNum(u.billed_gb_s)}</td><td>${fmtNum(u.measured_gb_s)}</td><td>${fmtNum(u.cpu_s)}</td><td>${money(u.cost, cur)}</td></tr>`;
  const head = (first) => html`<thead><tr><th>${first}</th><th>Invocations</th><th>Errors</th><th>Cold starts</th>
    <th>Billed GB-s</th><th>Measured GB-s</th><th>CPU s</th><th>Cost</th></tr></thead>`;
  return html`<section>
    <h1>Usage</h1>
    <div class="filters"><label>Since <select name="since" value=${since} onChange=${(e) => { location.hash = '#/usage?since=' + e.target.value; }}>
      ${['1d', '7d', '30d', '90d'].map((s) => html`<option value=${s}>${s}</option>`)}
    </select></label></div>
    <${Loading} state=${state}>${(u) => u.none
      ? html`<p class="muted" id="usage-empty">No data: this flick does not serve usage.</p>`
      : html`
        <p class="muted">Since ${u.since} · ${money(u.prices && u.prices.gb_second, u.currency)} per GB-s ·
          ${money(u.prices && u.prices.per_million_requests, u.currency)} per million requests</p>
        <table id="usage">${head('Function')}<tbody>
          ${(u.functions || []).map((f) => row(html`<a href=${'#/functions/' + enc(f.function)}>${f.function}</a>`, f, u.currency))}
        </tbody><tfoot>${u.total && row(html`<strong>Total</strong>`, u.total, u.currency)}</tfoot></table>
        <details><summary>Per day (${(u.days || []).length})</summary>
          <table>${head('Day · function')}<tbody>
            ${(u.days || []).map((d) => row(`${d.day} · ${d.function}`, d, u.currency))}
          </tbody></table>
        </details>`}<//>
  </section>`;
}

// --- the app ---------------------------------------------------------------

function App() {
  useHash();
  const { parts, query } = parseHash();
  const [view, arg] = parts;
  for (const a of document.querySelectorAll('header nav a')) {
    if (a.dataset.nav === (view || 'functions')) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  switch (view) {
    case 'functions': return arg ? html`<${FunctionPage} name=${arg} key=${arg} />` : html`<${FunctionsList} />`;
    case 'activations': return arg ? html`<${ActivationPage} id=${arg} key=${arg} />` : html`<${Activations} query=${query} />`;
    case 'charts': return html`<${Charts} name=${arg} query=${query} />`;
    case 'usage': return html`<${Usage} query=${query} />`;
    default: return html`<${FunctionsList} />`;
  }
}

const root = document.getElementById('app');
root.textContent = ''; // the shell's "Loading…"
render(html`<${App} />`, root);
