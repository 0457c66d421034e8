// The fleet dashboard's script (host/fleet/src/server/dashboard.rs serves it; no build step,
// no other origin). It asks the admin API with a bearer token and builds the page from the
// answers. Every value from the API enters the DOM through textContent, setAttribute or
// dataset, never as markup: a device's serial or journal line is text, whatever it holds.
//
// The token comes from the URL's fragment (#token=..., which browsers never send to a server,
// so it reaches no log) or the form, is kept in sessionStorage (this tab only), and the
// fragment is removed from the address bar at once.
'use strict';

(function () {
  /** A device that has not reported for this long is "not reporting". */
  const STALE_MINUTES = 15;
  /** The audit lines shown. */
  const AUDIT_LINES = 50;
  /** The rollouts shown, newest first. */
  const ROLLOUTS = 20;
  const KEY = 'aperture-fleet-token';
  const SVG = 'http://www.w3.org/2000/svg';
  const HEALTH = [
    ['healthy', 'healthy'],
    ['failed-health', 'failed health gate'],
    ['not-reporting', 'not reporting for ' + STALE_MINUTES + ' minutes'],
    ['revoked', 'revoked'],
  ];

  const $ = (id) => document.getElementById(id);

  /** An element with text (never markup) and a class. */
  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  /** A table row of text cells (or nodes). */
  function row(cells, cls) {
    const tr = el('tr', null, cls);
    for (const c of cells) {
      const td = el('td');
      if (c instanceof Node) td.appendChild(c);
      else if (c !== undefined && c !== null) td.textContent = String(c);
      tr.appendChild(td);
    }
    return tr;
  }

  function svg(tag, attrs) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return e;
  }

  function time(t) {
    if (t === null || t === undefined) return 'never';
    return new Date(t * 1000).toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
  }

  function percent(p) {
    return (Math.round(p * 10) / 10).toString() + ' %';
  }

  function count(n, noun) {
    return n + ' ' + noun + (n === 1 ? '' : 's');
  }

  function setStatus(text, state) {
    const s = $('status');
    s.textContent = text;
    s.className = state === 'error' ? 'error' : '';
    document.body.dataset.state = state;
  }

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path, token) {
    const r = await fetch(path, {
      headers: { Authorization: 'Bearer ' + token },
      cache: 'no-store',
      credentials: 'omit',
    });
    let body = null;
    try {
      body = await r.json();
    } catch (_) {
      body = null;
    }
    if (!r.ok) {
      throw new ApiError(r.status, body && body.error ? body.error : r.statusText);
    }
    return body;
  }

  /** The token from the fragment (then removed from the address bar) or this tab's storage. */
  function takeToken() {
    const m = /^#token=([^&]+)/.exec(location.hash);
    if (m) {
      let token = m[1];
      try {
        token = decodeURIComponent(token);
      } catch (_) {
        // Not percent-encoded after all: take it as it is.
      }
      sessionStorage.setItem(KEY, token);
      history.replaceState(null, '', location.pathname + location.search);
    }
    return sessionStorage.getItem(KEY);
  }

  function health(d, now) {
    if (d.revoked_at !== null && d.revoked_at !== undefined) return 'revoked';
    if (d.last_seen_at === null || d.last_seen_at === undefined ||
        now - d.last_seen_at > STALE_MINUTES * 60) {
      return 'not-reporting';
    }
    const h = d.last_report && d.last_report.health;
    if (h && h.passed === false) return 'failed-health';
    return 'healthy';
  }

  /** The runtime's cell, as `aperture-fleet devices` shows it (RuntimeSummary's Display). */
  function runtimeText(r) {
    if (!r) return '';
    const rt = r.runtime;
    const down = r.runtime_alive === false ? 'DOWN' : '';
    if (!rt) return down || 'alive';
    let t = down ? down + ', ' : '';
    if (rt.metrics === 'missing' || rt.metrics === 'malformed') return t + rt.metrics;
    if (rt.metrics === 'stale') t += (typeof rt.age_s === 'number' ? 'STALE ' + rt.age_s + 's' : 'STALE') + ': ';
    t += (rt.streaming || 0) + '/' + (rt.cameras || 0) + ' streaming';
    if (rt.stalled_names && rt.stalled_names.length) t += ' (' + rt.stalled_names.join(',') + ' stalled)';
    if (typeof rt.latency_p50_ms === 'number') t += ', p50 ' + rt.latency_p50_ms.toFixed(1) + ' ms';
    if (rt.model) t += ', ' + rt.model.execution_provider + (rt.model.fallback ? ' (FALLBACK)' : '');
    return t;
  }

  function clear() {
    for (const id of ['by-version', 'by-health', 'devices', 'audit']) {
      $(id).tBodies[0].replaceChildren();
    }
    $('rollouts').replaceChildren();
    $('audit-status').textContent = '';
    $('data').hidden = true;
  }

  function renderDevices(devices) {
    const now = Date.now() / 1000;
    const byVersion = new Map();
    const byHealth = new Map(HEALTH.map(([k]) => [k, 0]));
    const rows = [];
    for (const d of devices) {
      const h = health(d, now);
      byHealth.set(h, byHealth.get(h) + 1);
      const version = d.last_report ? d.last_report.version : null;
      if (h !== 'revoked') {
        const key = version === null ? '(no report yet)' : version;
        byVersion.set(key, (byVersion.get(key) || 0) + 1);
      }
      const label = HEALTH.find(([k]) => k === h)[1];
      const u = d.last_report && d.last_report.last_update;
      const update = u ? u.result + (u.version ? ' ' + u.version : '') + ': ' + u.journal : '';
      const tr = row([d.id, d.serial, d.channel, (d.tags || []).join(', '), version, label,
        time(d.last_seen_at), update, runtimeText(d.last_report)], 'device');
      tr.dataset.id = d.id;
      const rt = d.last_report && d.last_report.runtime;
      if (rt) tr.dataset.runtime = rt.metrics;
      tr.dataset.health = h;
      tr.cells[5].className = 'health-' + h;
      rows.push(tr);
    }
    $('devices').tBodies[0].replaceChildren(...rows);
    const versions = [...byVersion.entries()].sort((a, b) => (a[0] < b[0] ? -1 : 1));
    $('by-version').tBodies[0].replaceChildren(...versions.map(([v, n]) => {
      const tr = row([v, n], 'version-count');
      tr.dataset.version = v;
      tr.dataset.count = n;
      tr.cells[1].className = 'count';
      return tr;
    }));
    $('by-health').tBodies[0].replaceChildren(...HEALTH.map(([k, label]) => {
      const tr = row([label, byHealth.get(k)], 'health-count health-' + k);
      tr.dataset.health = k;
      tr.dataset.count = byHealth.get(k);
      tr.cells[1].className = 'count';
      return tr;
    }));
  }

  /**
   * The rollout's failure rate (left axis, 0 to 100 %) and installs (right axis, 0 to the
   * devices it names) over time, one point per time in the series.
   */
  function chart(r, points) {
    const W = 520;
    const H = 180;
    const L = 44;
    const R = 44;
    const T = 12;
    const B = 28;
    const s = svg('svg', {
      class: 'chart', width: W, height: H, viewBox: '0 0 ' + W + ' ' + H, role: 'img',
      'aria-label': 'Rollout ' + r.id + ': failure rate and installs over time',
    });
    s.dataset.points = points.length;
    const t0 = points[0].at;
    const t1 = points[points.length - 1].at;
    const maxInstalls = Math.max(1, r.progress.named,
      ...points.map((p) => p.installed));
    const x = (t) => (t1 === t0 ? L + (W - L - R) / 2 : L + ((t - t0) / (t1 - t0)) * (W - L - R));
    const y = (v, max) => T + (1 - v / max) * (H - T - B);
    s.appendChild(svg('line', { class: 'axis', x1: L, y1: T, x2: L, y2: H - B }));
    s.appendChild(svg('line', { class: 'axis', x1: W - R, y1: T, x2: W - R, y2: H - B }));
    s.appendChild(svg('line', { class: 'axis', x1: L, y1: H - B, x2: W - R, y2: H - B }));
    const label = (text, attrs) => {
      const t = svg('text', attrs);
      t.textContent = text;
      s.appendChild(t);
    };
    label('100 %', { x: 4, y: T + 8 });
    label('0 %', { x: 4, y: H - B });
    label(String(maxInstalls), { x: W - R + 4, y: T + 8 });
    label('0', { x: W - R + 4, y: H - B });
    label(time(t0), { x: L, y: H - 8 });
    if (t1 !== t0) label(time(t1), { x: W - R, y: H - 8, 'text-anchor': 'end' });
    for (const [cls, value, max] of [
      ['failure', (p) => p.failure_percent, 100],
      ['installs', (p) => p.installed, maxInstalls],
    ]) {
      s.appendChild(svg('polyline', {
        class: cls,
        points: points.map((p) => x(p.at).toFixed(1) + ',' + y(value(p), max).toFixed(1)).join(' '),
      }));
      for (const p of points) {
        const c = svg('circle', { class: 'point ' + cls, cx: x(p.at).toFixed(1),
          cy: y(value(p), max).toFixed(1), r: 3 });
        const title = svg('title');
        title.textContent = time(p.at) + ': ' + p.tried + ' tried, ' + p.installed +
          ' installed, ' + p.failed + ' failed (' + percent(p.failure_percent) + ')';
        c.appendChild(title);
        s.appendChild(c);
      }
    }
    return s;
  }

  function renderRollout(r, series) {
    const box = el('article', null, 'rollout');
    box.dataset.id = r.id;
    box.dataset.state = r.state;
    box.dataset.failurePercent = r.progress.failure_percent;
    const h = el('h3', 'Rollout ' + r.id + ': ' + r.version + ' on ' + r.channel + ' ');
    h.appendChild(el('span', r.state, 'state state-' + r.state));
    box.appendChild(h);
    if (r.halt_reason) box.appendChild(el('p', 'Halted: ' + r.halt_reason, 'halt-reason'));
    const p = r.progress;
    const counts = el('table', null, 'progress');
    const head = el('tr');
    const body = el('tr');
    for (const [k, v] of [['named', p.named], ['pending', p.pending], ['started', p.started],
      ['installed', p.installed], ['failed install', p.failed_install],
      ['failed health', p.failed_health], ['failure rate', percent(p.failure_percent)]]) {
      head.appendChild(el('th', k));
      const td = el('td', v);
      td.dataset.key = k;
      body.appendChild(td);
    }
    counts.append(head, body);
    box.appendChild(counts);
    box.appendChild(el('p', 'Started ' + time(r.started_at) + ' by ' + r.created_by +
      '; waves ' + r.waves + '; signed state ' + (r.signed_state || 'none'), 'meta'));
    if (series instanceof Error) {
      box.appendChild(el('p', 'Its series could not be read: ' + series.message, 'error'));
    } else if (series.points.length === 0) {
      box.appendChild(el('p', 'No device has reported about this release yet.', 'no-series'));
    } else {
      box.appendChild(chart(r, series.points));
      const legend = el('p', null, 'legend');
      legend.append(el('span', '● failure rate (left axis)', 'legend-failure'), ' ',
        el('span', '● installed devices (right axis)', 'legend-installs'));
      box.appendChild(legend);
    }
    return box;
  }

  function renderAudit(audit) {
    if (audit instanceof ApiError && audit.status === 403) {
      $('audit-status').textContent = 'The audit log needs an admin token.';
      $('audit-status').className = 'needs-admin';
      return;
    }
    if (audit instanceof Error) {
      $('audit-status').textContent = 'The audit log could not be read: ' + audit.message;
      $('audit-status').className = 'error';
      return;
    }
    $('audit-status').textContent = 'The newest ' + count(audit.length, 'entry')
      .replace(/ys$/, 'ies') + '.';
    $('audit-status').className = '';
    $('audit').tBodies[0].replaceChildren(...audit.map((a) => {
      const tr = row([time(a.at), a.actor, a.action, a.target, JSON.stringify(a.detail)],
        'audit-entry');
      tr.dataset.action = a.action;
      return tr;
    }));
  }

  async function load(token) {
    setStatus('Loading…', 'loading');
    let devices;
    let rollouts;
    try {
      [devices, rollouts] = await Promise.all([api('/v1/devices', token),
        api('/v1/rollouts', token)]);
    } catch (e) {
      clear();
      if (e instanceof ApiError && (e.status === 401 || e.status === 403)) {
        sessionStorage.removeItem(KEY);
        setStatus('The API refused this token (' + e.status + '): ' + e.message +
          '. Enter another.', 'error');
        $('login').hidden = false;
      } else {
        setStatus('The API could not be read: ' + e.message, 'error');
      }
      return;
    }
    const total = rollouts.length;
    rollouts = rollouts.slice(0, ROLLOUTS);
    const settle = (promise) => promise.catch((e) => (e instanceof Error ? e : new Error(e)));
    const [series, audit] = await Promise.all([
      Promise.all(rollouts.map((r) => settle(api('/v1/rollouts/' + encodeURIComponent(r.id) +
        '/series', token)))),
      settle(api('/v1/audit?limit=' + AUDIT_LINES, token)),
    ]);
    renderDevices(devices);
    $('rollouts').replaceChildren(...rollouts.map((r, i) => renderRollout(r, series[i])));
    $('rollouts-empty').hidden = rollouts.length > 0;
    renderAudit(audit);
    $('data').hidden = false;
    $('login').hidden = true;
    $('logout').hidden = false;
    $('refresh').hidden = false;
    setStatus(count(devices.length, 'device') + ', ' + count(total, 'rollout') +
      (total > ROLLOUTS ? ' (the newest ' + ROLLOUTS + ' shown)' : '') + ', as of ' +
      time(Math.floor(Date.now() / 1000)) + '.', 'ready');
  }

  function start() {
    $('login').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const token = $('token-input').value.trim();
      $('token-input').value = '';
      if (!token) return;
      sessionStorage.setItem(KEY, token);
      load(token);
    });
    $('logout').addEventListener('click', () => {
      sessionStorage.removeItem(KEY);
      clear();
      $('logout').hidden = true;
      $('refresh').hidden = true;
      $('login').hidden = false;
      setStatus('Enter an API token.', 'login');
    });
    $('refresh').addEventListener('click', () => {
      const token = sessionStorage.getItem(KEY);
      if (token) load(token);
    });
    const token = takeToken();
    if (token) {
      load(token);
    } else {
      $('login').hidden = false;
      setStatus('Enter an API token.', 'login');
    }
  }

  start();
}());
