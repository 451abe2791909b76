/* Generation Analytics dashboard: plain JavaScript, no build step, no dependency but the vendored uPlot.
 *
 * Every figure comes from the gateway's JSON API (api/v1/analytics/generation/...), shown as it answers:
 * nothing is computed here but shares for bars and stacks for charts. Each panel says what it shows, for
 * people and for tests: data-state="loading|refreshing|ready|error" and data-query="<the API query>";
 * each figure carries its raw value in data-value. The body gets data-state="ready" after the first full
 * render and data-refreshes=<n> after each refresh.
 *
 * With auth on, the page asks once for a key with the `read` scope, keeps it in sessionStorage (this tab
 * only) and sends it as `Authorization: Bearer …`, never in a URL.
 */
(() => {
  'use strict';

  const API = 'api/v1/analytics/generation/';
  const KEY_STORE = 'generation-analytics.api-key';
  const CHART_HEIGHT = 200;
  const MAIN_PANELS = ['overview', 'trends', 'models', 'failures', 'peak', 'users', 'pipeline', 'alerts', 'alert-events', 'events'];
  const USER_PANELS = ['overview', 'user'];
  const DAYS = ['Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat', 'Sun'];
  const DOW = [1, 2, 3, 4, 5, 6, 0]; // the API's day_of_week (0 = Sunday) of each row above

  // This script runs before uPlot's (both deferred, in order) so that the first questions leave sooner.
  const pageReady = new Promise((resolve) => {
    if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', resolve, {once: true});
    else resolve();
  });

  const $ = (selector, root = document) => root.querySelector(selector);
  const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

  // ------------------------------------------------------------------ formatting (en-US, UTC)
  const numberFormat = (digits) =>
    new Intl.NumberFormat('en-US', {minimumFractionDigits: digits, maximumFractionDigits: digits});
  const N0 = numberFormat(0);
  const N1 = numberFormat(1);
  const N2 = numberFormat(2);
  const fmt = {
    int: (v) => N0.format(v),
    dec: (v) => N1.format(v),
    pct: (v) => N1.format(v) + ' %',
    ms: (v) => (v < 1000 ? N0.format(v) + ' ms' : (v < 10000 ? N2 : N1).format(v / 1000) + ' s'),
    seconds: (v) => (v < 120 ? N1.format(v) + ' s' : v < 7200 ? N1.format(v / 60) + ' min' : N1.format(v / 3600) + ' h'),
    time: (iso) => (iso ? iso.slice(0, 19).replace('T', ' ') : '—'),
    hour: (h) => String(h).padStart(2, '0') + ':00',
  };
  const compact = new Intl.NumberFormat('en-US', {notation: 'compact', maximumFractionDigits: 1});

  // ------------------------------------------------------------------ state
  const state = {
    days: 7,
    interval: 'hourly',
    user: '',
    filters: {order: 'newest', page_size: '25'},
    pages: [''], // page tokens of the event pages seen: pages[0] is the first page
    page: 0,
    sort: {key: 'total_generations', dir: -1},
  };
  const last = {}; // the last answer of each panel
  const charts = {}; // uPlot instances by name, with .raw (the API's series) and .build (options)
  const seqs = {}; // per panel: the latest query's number, so a late answer never overwrites a newer one
  let config = {auth_required: false, refresh_s: 30, features: {}};
  let refreshS = 30;
  let refreshes = 0;
  let timer = 0;
  let keyPrompt = null;
  let scrollToEvents = false;
  let lastRefreshAt = 0;

  // ------------------------------------------------------------------ the API, with the key
  class ApiError extends Error {
    constructor(status, error) {
      const e = error || {};
      super(`${e.code || 'HTTP ' + status}${e.field ? ' (' + e.field + ')' : ''}: ${e.message || 'request failed'}`);
      this.status = status;
      this.field = e.field || '';
    }
  }

  function storedKey() {
    try {
      return sessionStorage.getItem(KEY_STORE) || '';
    } catch (_) {
      return '';
    }
  }

  function askKey(message, refused) {
    if (!keyPrompt) {
      keyPrompt = new Promise((resolve) => {
        const dialog = $('#key-dialog');
        const note = $('#key-message');
        note.textContent = message;
        note.dataset.kind = refused ? 'refused' : 'ask';
        const input = $('#key-input');
        input.value = '';
        $('#key-form').onsubmit = (event) => {
          event.preventDefault();
          const key = input.value.trim();
          if (!key) return;
          sessionStorage.setItem(KEY_STORE, key);
          dialog.close();
          keyPrompt = null;
          resolve(key);
        };
        dialog.oncancel = (event) => event.preventDefault(); // nothing to show without a key
        dialog.showModal();
        input.focus();
      });
    }
    return keyPrompt;
  }

  async function api(path) {
    for (;;) {
      const key = storedKey();
      if (!key && config.auth_required) {
        await askKey('This service needs an API key with the read scope.', false);
        continue;
      }
      const headers = {Accept: 'application/json'};
      if (key) headers.Authorization = 'Bearer ' + key;
      let response;
      try {
        response = await fetch(API + path, {headers, cache: 'no-store', credentials: 'omit'});
      } catch (_) {
        throw new ApiError(0, {code: 'UNREACHABLE', message: 'cannot reach the service'});
      }
      let body = null;
      try {
        body = await response.json();
      } catch (_) {
        body = null;
      }
      if (response.status === 401 || response.status === 403) {
        if (key !== storedKey()) continue; // another panel got a new key meanwhile
        sessionStorage.removeItem(KEY_STORE);
        const message =
          response.status === 403
            ? "This key lacks the 'read' scope: give a key with the read scope."
            : key
              ? 'That key was not accepted (unknown, wrong or revoked).'
              : 'This service needs an API key with the read scope.';
        await askKey(message, Boolean(key));
        continue;
      }
      if (!response.ok) throw new ApiError(response.status, body && body.error);
      return body;
    }
  }

  // ------------------------------------------------------------------ small DOM helpers
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props || {})) {
      if (value === undefined || value === null) continue;
      if (name === 'text') node.textContent = value;
      else if (name === 'class') node.className = value;
      else if (name === 'value') node.dataset.value = String(value);
      else node.setAttribute(name, value);
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  // A table cell showing `value` formatted by `format`, its raw value in data-value.
  function cell(value, format, cls) {
    const shown = value === null || value === undefined || value === '' ? '—' : format ? format(value) : String(value);
    return el('td', {class: cls, value: value === null || value === undefined ? '' : value, text: shown});
  }

  function fillBody(tbody, rows, columns, empty) {
    tbody.replaceChildren(
      ...(rows.length
        ? rows.map((row) => el('tr', {}, ...columns.map((column) => column(row))))
        : [el('tr', {}, el('td', {class: 'empty', colspan: tbody.closest('table').tHead.rows[0].cells.length, text: empty}))]),
    );
  }

  const userLink = (id) => {
    const params = new URLSearchParams({days: state.days, interval: state.interval, user: id});
    // Shortened in tables (the user's page shows it whole); the whole id is the link's title.
    return el('a', {href: '#' + params, class: 'user-link', 'data-user': id, title: id}, el('code', {text: id.slice(0, 8) + '…'}));
  };

  const outcome = (success, type) =>
    type === 'cancellation'
      ? el('td', {class: 'text cancelled', value: '', text: 'cancelled'})
      : success === null || success === undefined
        ? el('td', {class: 'text', value: '', text: '—'})
        : el('td', {class: 'text ' + (success ? 'ok' : 'failed'), value: String(success), text: success ? '✓ ok' : '✗ failed'});

  // ------------------------------------------------------------------ tiles
  // better: +1 when up is good, -1 when up is bad, 0 when neither (for the previous window's delta).
  const OVERVIEW_TILES = [
    {field: 'total_requests', label: 'Requests', f: fmt.int, better: 0},
    {
      field: 'success_rate_pct', label: 'Success rate', f: fmt.pct, better: 1, points: true,
      sub: (d) => `${fmt.int(d.successful_generations)} ok · ${fmt.int(d.failed_generations)} failed`,
    },
    {field: 'p50_duration_ms', label: 'p50 duration', f: fmt.ms, better: -1, sub: (d) => `avg ${fmt.ms(d.avg_duration_ms)}`},
    {field: 'p95_duration_ms', label: 'p95 duration', f: fmt.ms, better: -1, sub: (d) => `p99 ${fmt.ms(d.p99_duration_ms)}`},
    {field: 'total_images_generated', label: 'Images', f: fmt.int, better: 0},
    {field: 'unique_users', label: 'Unique users', f: fmt.int, better: 0},
    {field: 'cancelled_generations', label: 'Cancellations', f: fmt.int, better: -1},
    {field: 'avg_queue_length', label: 'Queue length', f: fmt.dec, better: -1, sub: (d) => `avg · max ${fmt.int(d.max_queue_length)}`},
  ];
  const USER_TILES = [
    {field: 'total_requests', label: 'Requests', f: fmt.int},
    {
      field: 'success_rate_pct', label: 'Success rate', f: fmt.pct,
      sub: (d) => `${fmt.int(d.successful_generations)} ok · ${fmt.int(d.failed_generations)} failed`,
    },
    {field: 'p50_duration_ms', label: 'p50 duration', f: fmt.ms, sub: (d) => `avg ${fmt.ms(d.avg_duration_ms)}`},
    {field: 'p95_duration_ms', label: 'p95 duration', f: fmt.ms},
    {field: 'total_images_generated', label: 'Images', f: fmt.int},
    {field: 'cancelled_generations', label: 'Cancellations', f: fmt.int},
  ];
  const PIPELINE_TILES = [
    {field: 'stream_length', label: 'Stream length', f: fmt.int},
    {field: 'undelivered_entries', label: 'Not yet read', f: fmt.int},
    {field: 'pending_entries', label: 'Read, not acked', f: fmt.int},
    {field: 'oldest_untransferred_age_s', label: 'Oldest waiting', f: fmt.seconds},
    {field: 'dead_letter_count', label: 'Dead letters', f: fmt.int, warn: (v) => v > 0},
    {field: 'dirty_hours', label: 'Dirty hours', f: fmt.int},
    {field: 'failing_hours_count', label: 'Failing hours', f: fmt.int, warn: (v) => v > 0},
    {field: 'total_events', label: 'Events stored', f: fmt.int, sub: (d) => `latest ${fmt.time(d.latest_event_at)}`},
    {field: 'total_hours', label: 'Hours aggregated', f: fmt.int, sub: (d) => `latest ${fmt.time(d.latest_hourly_metric_at)}`},
  ];

  function buildTiles(container, specs) {
    container.replaceChildren(
      ...specs.map((spec) =>
        el('div', {class: 'tile', 'data-field': spec.field},
          el('span', {class: 'label', text: spec.label}),
          el('span', {class: 'value', text: '…'}),
          el('span', {class: 'sub'}),
          el('span', {class: 'prev', hidden: ''})),
      ),
    );
  }

  // The previous equal window's figure, when the API answers one (`previous`: the same fields for the
  // window just before); nothing is shown, and nothing made up, while it does not.
  function previousText(spec, now, before) {
    const shown = `previous ${spec.f(before)}`;
    if (spec.points) return `${shown} (${now >= before ? '+' : ''}${N1.format(now - before)} pt)`;
    if (!before) return shown;
    const change = ((now - before) / before) * 100;
    return `${shown} (${change >= 0 ? '+' : ''}${N1.format(change)} %)`;
  }

  function fillTiles(container, specs, data, previous, changes) {
    const significant = new Set((changes || []).filter((c) => c.significant).map((c) => c.metric));
    for (const spec of specs) {
      const tile = $(`[data-field="${spec.field}"]`, container);
      const value = data[spec.field];
      const valueNode = $('.value', tile);
      valueNode.textContent = value === null || value === undefined ? '—' : spec.f(value);
      valueNode.dataset.value = String(value);
      $('.sub', tile).textContent = spec.sub ? spec.sub(data) : '';
      tile.classList.toggle('warn', Boolean(spec.warn && spec.warn(value)));
      const prev = $('.prev', tile);
      const before = previous ? previous[spec.field] : undefined;
      if (typeof before === 'number' && typeof value === 'number') {
        prev.textContent = previousText(spec, value, before);
        prev.dataset.value = String(before);
        prev.hidden = false;
        // Coloured only when the API calls the change significant (not chance), green when it is for the better.
        const direction = significant.has(spec.field) ? Math.sign(value - before) * (spec.better || 0) : 0;
        prev.className = 'prev' + (direction > 0 ? ' up' : direction < 0 ? ' down' : '');
        prev.title = significant.has(spec.field) ? 'a significant change (the API\'s test)' : '';
      } else {
        prev.hidden = true;
        prev.textContent = '';
        delete prev.dataset.value;
      }
    }
  }

  // ------------------------------------------------------------------ charts (uPlot)
  const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  const bars = () => uPlot.paths.bars({size: [0.85, 48], gap: 1});
  const toSeconds = (iso) => Date.parse(iso) / 1000;
  const daySeconds = (day) => Date.parse(day + 'T00:00:00Z') / 1000;

  // Time ticks in UTC, 24-hour: whole hours or days only, the date at midnight.
  const HOUR_INCRS = [3600, 2 * 3600, 3 * 3600, 6 * 3600, 12 * 3600];
  const DAY_INCRS = [86400, 2 * 86400, 7 * 86400, 14 * 86400, 28 * 86400];
  const timeTicks = (u, splits) =>
    splits.map((t) => {
      const iso = new Date(t * 1000).toISOString();
      return iso.slice(11, 16) === '00:00' ? iso.slice(5, 10) : iso.slice(11, 16);
    });

  function axes(yFormat, extra, days) {
    const fg = css('--muted');
    const grid = {stroke: css('--border'), width: 1};
    return [
      {stroke: fg, grid, ticks: grid, space: 60, incrs: days ? DAY_INCRS : [...HOUR_INCRS, ...DAY_INCRS], values: timeTicks},
      {stroke: fg, grid, ticks: grid, size: 52, values: (u, values) => values.map(yFormat)},
      ...(extra || []).map((axis) => ({stroke: fg, grid: {show: false}, ticks: grid, size: 48, side: 1, ...axis})),
    ];
  }

  // A series whose legend shows the API's value (stacked series draw sums, the legend does not).
  function raw(name, label, format) {
    return (u, _, __, idx) => {
      const values = charts[name] && charts[name].raw[label];
      const v = idx === null || idx === undefined || !values ? null : values[idx];
      return v === null || v === undefined ? '—' : format(v);
    };
  }

  // Bars at the window's edges would be cut in half: pad the time axis by half a bucket on each side.
  const padded = (u, min, max) => {
    const x = u.data[0];
    const half = x.length > 1 ? (x[1] - x[0]) / 2 : 1800;
    return [min - half, max + half];
  };
  // A bucket between two without completions is a lone point, which a line alone does not show: dot those.
  const lonely = (u, si) => {
    const ys = u.data[si];
    const found = [];
    for (let i = 0; i < ys.length; i++) {
      if (ys[i] !== null && (i === 0 || ys[i - 1] === null) && (i === ys.length - 1 || ys[i + 1] === null)) found.push(i);
    }
    return found.length ? found : null;
  };
  const dots = {show: false, size: 5, filter: lonely};

  const timeSeries = () => ({label: 'UTC', value: (u, ts) => (ts === null ? '—' : new Date(ts * 1000).toISOString().slice(0, 16).replace('T', ' '))});
  const daySeries = () => ({label: 'day (UTC)', value: (u, ts) => (ts === null ? '—' : new Date(ts * 1000).toISOString().slice(0, 10))});

  const CHARTS = {
    requests: () => ({
      series: [
        timeSeries(),
        {label: 'cancelled', fill: css('--cancel'), stroke: css('--cancel'), width: 0, paths: bars(), value: raw('requests', 'cancelled', fmt.int)},
        {label: 'failed', fill: css('--fail'), stroke: css('--fail'), width: 0, paths: bars(), value: raw('requests', 'failed', fmt.int)},
        {label: 'successful', fill: css('--ok'), stroke: css('--ok'), width: 0, paths: bars(), value: raw('requests', 'successful', fmt.int)},
        {label: 'requests', stroke: css('--req'), width: 1.5, value: raw('requests', 'requests', fmt.int)},
      ],
      axes: axes((v) => compact.format(v)),
      scales: {x: {time: true, range: padded}, y: {range: (u, min, max) => [0, Math.max(1, max)]}},
    }),
    success: () => ({
      series: [timeSeries(), {label: 'success rate', stroke: css('--ok'), width: 1.5, points: dots, value: raw('success', 'success rate', fmt.pct)}],
      axes: axes((v) => v + ' %'),
      scales: {y: {range: (u, min, max) => [min === null ? 0 : Math.max(0, Math.floor(min - 2)), 100]}},
    }),
    latency: () => ({
      series: [
        timeSeries(),
        {label: 'p50', stroke: css('--p50'), width: 1.5, points: dots, value: raw('latency', 'p50', fmt.ms)},
        {label: 'p95', stroke: css('--p95'), width: 1.5, points: dots, value: raw('latency', 'p95', fmt.ms)},
        {label: 'p99', stroke: css('--p99'), width: 1.5, points: dots, value: raw('latency', 'p99', fmt.ms)},
      ],
      axes: axes((v) => compact.format(v)),
      scales: {y: {range: (u, min, max) => [0, Math.max(1, max)]}},
    }),
    failures: () => ({
      series: [
        daySeries(),
        {label: 'failures', fill: css('--fail'), stroke: css('--fail'), width: 0, paths: bars(), value: raw('failures', 'failures', fmt.int)},
        {label: 'failure rate', stroke: css('--p99'), width: 1.5, scale: 'pct', points: dots, value: raw('failures', 'failure rate', fmt.pct)},
      ],
      axes: axes((v) => compact.format(v), [{scale: 'pct', values: (u, values) => values.map((v) => v + ' %')}], true),
      scales: {
        x: {time: true, range: padded},
        y: {range: (u, min, max) => [0, Math.max(1, max)]},
        pct: {range: (u, min, max) => [0, Math.max(1, max)]},
      },
    }),
  };

  function chartWidth(box) {
    return Math.max(240, Math.floor(box.clientWidth));
  }

  // Draws `data` in the chart `name` (in `box`): created once, then updated in place (no flicker).
  function drawChart(name, box, data, rawSeries) {
    let chart = charts[name];
    if (chart && chart.root.isConnected) {
      chart.raw = rawSeries;
      chart.setData(data);
      return chart;
    }
    const options = {
      width: chartWidth(box),
      height: CHART_HEIGHT,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), 'Etc/UTC'),
      cursor: {drag: {x: false, y: false}},
      legend: {live: true},
      ...CHARTS[name](),
    };
    chart = new uPlot(options, data, box);
    chart.raw = rawSeries;
    chart.box = box;
    charts[name] = chart;
    resizer.observe(box);
    return chart;
  }

  const resizer = new ResizeObserver(() => {
    for (const chart of Object.values(charts)) {
      const width = chartWidth(chart.box);
      if (width !== chart.width) chart.setSize({width, height: CHART_HEIGHT});
    }
  });

  // Colours are read from the CSS variables when a chart is built: rebuild when the system scheme flips.
  function rebuildCharts() {
    for (const [name, chart] of Object.entries(charts)) {
      const data = chart.data;
      const rawSeries = chart.raw;
      const box = chart.box;
      chart.destroy();
      delete charts[name];
      drawChart(name, box, data, rawSeries);
    }
  }

  // ------------------------------------------------------------------ panels
  function renderOverview(d) {
    fillTiles($('#tiles'), OVERVIEW_TILES, d, d.previous && typeof d.previous === 'object' ? d.previous : null, d.changes);
    const asOf = $('#data-as-of');
    asOf.textContent = d.data_as_of ? fmt.time(d.data_as_of) + ' UTC' : 'no data yet';
    asOf.dataset.value = d.data_as_of || '';
    if (d.data_as_of) asOf.setAttribute('datetime', d.data_as_of);
    const pending = $('#pending');
    pending.textContent = fmt.int(d.pending_events);
    pending.dataset.value = String(d.pending_events);
    $('[data-panel="freshness"]').dataset.state = 'ready';
  }

  function renderTrends(d) {
    const points = d.data_points;
    const x = points.map((p) => toSeconds(p.timestamp));
    const pick = (field) => points.map((p) => p[field]);
    const completed = points.map((p) => p.successful_generations + p.failed_generations);
    // A bucket without completions has no rate or duration: a gap, not a zero.
    const whenCompleted = (values) => values.map((v, i) => (completed[i] ? v : null));
    const successful = pick('successful_generations');
    const failed = pick('failed_generations');
    const cancelled = pick('cancelled_generations');
    const requests = pick('total_requests');
    const stackFailed = successful.map((v, i) => v + failed[i]);
    const stackCancelled = stackFailed.map((v, i) => v + cancelled[i]);
    drawChart('requests', $('#chart-requests'), [x, stackCancelled, stackFailed, successful, requests], {
      successful, failed, cancelled, requests,
    });
    const rate = whenCompleted(points.map((p) => p.success_rate * 100));
    drawChart('success', $('#chart-success'), [x, rate], {'success rate': rate});
    const p50 = whenCompleted(pick('p50_duration_ms'));
    const p95 = whenCompleted(pick('p95_duration_ms'));
    const p99 = whenCompleted(pick('p99_duration_ms'));
    drawChart('latency', $('#chart-latency'), [x, p50, p95, p99], {p50, p95, p99});
  }

  function sortedModels(models) {
    const {key, dir} = state.sort;
    return [...models].sort((a, b) => {
      const x = a[key];
      const y = b[key];
      if (typeof x === 'number' && typeof y === 'number') return (x - y) * dir;
      return String(x || '').localeCompare(String(y || '')) * dir;
    });
  }

  function renderModels(d) {
    const models = sortedModels(d.models);
    const most = Math.max(1, ...d.models.map((m) => m.total_generations));
    const slowest = Math.max(1, ...d.models.map((m) => m.p95_duration_ms));
    const withBar = (td, share, cls) => {
      const bar = el('span', {class: 'bar' + (cls ? ' ' + cls : '')});
      bar.style.setProperty('--share', String(share));
      td.append(bar);
      return td;
    };
    fillBody($('#models-table tbody'), models, [
      (m) => cell(m.model_checkpoint, null, 'text name'),
      (m) => withBar(cell(m.total_generations, fmt.int), m.total_generations / most),
      (m) => cell(m.success_rate_pct, fmt.pct),
      (m) => cell(m.avg_duration_ms, fmt.ms),
      (m) => cell(m.p50_duration_ms, fmt.ms),
      (m) => withBar(cell(m.p95_duration_ms, fmt.ms), m.p95_duration_ms / slowest, 'p95'),
      (m) => cell(m.p99_duration_ms, fmt.ms),
      (m) => cell(m.total_images_generated, fmt.int),
      (m) => cell(m.last_used_at, fmt.time, 'text'),
    ], 'No generations in this window');
    const others = d.others && d.total_models > d.models.length ? d.others : null;
    $('#models-table tfoot').replaceChildren(
      ...(others
        ? [el('tr', {class: 'others'},
            cell(`(others: ${fmt.int(d.total_models - d.models.length)} more)`, null, 'text'),
            cell(others.total_generations, fmt.int), cell(others.success_rate_pct, fmt.pct), cell(others.avg_duration_ms, fmt.ms),
            el('td'), el('td'), el('td'), cell(others.total_images_generated, fmt.int), el('td'))]
        : []),
    );
    $('#models-note').textContent = d.total_models ? `${fmt.int(d.models.length)} of ${fmt.int(d.total_models)} checkpoints` : '';
    for (const th of $$('#models-table th')) {
      th.setAttribute('aria-sort', th.dataset.key === state.sort.key ? (state.sort.dir > 0 ? 'ascending' : 'descending') : 'none');
    }
    $('#checkpoint-names').replaceChildren(...d.models.map((m) => el('option', {value: m.model_checkpoint})));
  }

  function renderFailures(d) {
    const summary = $('#failures-summary');
    summary.replaceChildren(
      el('b', {'data-field': 'total_failures', value: d.total_failures, text: fmt.int(d.total_failures)}),
      ' failures of ',
      el('b', {'data-field': 'total_completions', value: d.total_completions, text: fmt.int(d.total_completions)}),
      ' completions (',
      el('b', {'data-field': 'failure_rate_pct', value: d.failure_rate_pct, text: fmt.pct(d.failure_rate_pct)}),
      `) · ${fmt.int(d.total_error_types)} error types`,
    );
    fillBody($('#failures-table tbody'), d.error_types, [
      (e) => cell(e.error_type, null, 'text name'),
      (e) => cell(e.count, fmt.int),
      (e) => cell(e.affected_users, fmt.int),
      (e) => cell(e.avg_duration_ms, fmt.ms),
      (e) => cell(e.last_seen, fmt.time, 'text'),
      (e) => cell(e.models.join(', ') + (e.total_models > e.models.length ? ` +${e.total_models - e.models.length}` : ''), null, 'text wrap'),
      (e) => cell(e.sample_messages[0] || '', null, 'text wrap'),
    ], 'No failures in this window');
    const others = d.others && d.others.count > 0 ? d.others : null;
    $('#failures-table tfoot').replaceChildren(
      ...(others
        ? [el('tr', {class: 'others'}, cell(`(others: ${fmt.int(d.total_error_types - d.error_types.length)} more)`, null, 'text'),
            cell(others.count, fmt.int), cell(others.affected_users, fmt.int), cell(others.avg_duration_ms, fmt.ms),
            el('td'), el('td'), el('td'))]
        : []),
    );
    const trend = d.failure_trends;
    const failures = trend.map((t) => t.failures);
    const rate = trend.map((t) => (t.total_completions ? t.failure_rate * 100 : null));
    drawChart('failures', $('#chart-failures'), [trend.map((t) => daySeconds(t.date)), failures, rate], {
      failures, 'failure rate': rate,
    });
    $('#error-names').replaceChildren(...d.error_types.map((e) => el('option', {value: e.error_type})));
  }

  function buildHeatmap() {
    const grid = $('#heatmap');
    const cells = [el('span')];
    for (let h = 0; h < 24; h++) cells.push(el('span', {class: 'head', text: h % 3 === 0 ? String(h) : ''}));
    DAYS.forEach((day, row) => {
      cells.push(el('span', {class: 'day', text: day}));
      for (let h = 0; h < 24; h++) {
        cells.push(el('span', {class: 'cell', role: 'gridcell', 'data-dow': DOW[row], 'data-hour': h, value: 0}));
      }
    });
    grid.replaceChildren(...cells);
  }

  function renderPeak(d) {
    const byCell = new Map(d.heatmap.map((c) => [`${c.day_of_week}:${c.hour_of_day}`, c.avg_requests]));
    const most = Math.max(0, ...d.heatmap.map((c) => c.avg_requests));
    for (const node of $$('#heatmap .cell')) {
      const value = byCell.get(`${node.dataset.dow}:${node.dataset.hour}`) || 0;
      node.dataset.value = String(value);
      node.style.setProperty('--v', String(most ? value / most : 0));
      const day = DAYS[DOW.indexOf(Number(node.dataset.dow))];
      node.title = `${day} ${fmt.hour(Number(node.dataset.hour))} UTC: ${N2.format(value)} requests per hour on average`;
    }
    const busiest = [...d.peak_hours].filter((h) => h.total_requests > 0).sort((a, b) => b.avg_requests - a.avg_requests).slice(0, 3);
    $('#peak-summary').textContent = busiest.length
      ? 'Busiest hours: ' + busiest.map((h) => `${fmt.hour(h.hour_of_day)} (${N1.format(h.avg_requests)}/h, p95 ${fmt.ms(h.avg_p95_duration_ms)})`).join(', ')
      : 'No requests in this window.';
  }

  function renderUsers(d) {
    fillBody($('#users-table tbody'), d.users, [
      (u) => el('td', {class: 'text', value: u.user_id}, userLink(u.user_id)),
      (u) => cell(u.total_requests, fmt.int),
      (u) => cell(u.successful_generations, fmt.int),
      (u) => cell(u.failed_generations, fmt.int),
      (u) => cell(u.avg_duration_ms, fmt.ms),
      (u) => cell(u.last_generation_at, fmt.time, 'text'),
    ], 'No users in this window');
  }

  function renderPipeline(d) {
    fillTiles($('#pipeline-tiles'), PIPELINE_TILES, d, null);
    const runs = [['transfer', d.last_transfer], ['aggregation', d.last_aggregation]];
    fillBody($('#runs-table tbody'), runs, [
      ([name]) => cell(name, null, 'text'),
      ([, r]) => cell(r && r.started_at, fmt.time, 'text'),
      ([, r]) => cell(r && r.started_at ? r.duration_s : null, fmt.seconds),
      ([, r]) => cell(r && r.started_at ? r.processed : null, fmt.int),
      ([, r]) => cell(r && r.error, null, 'text wrap failed'),
      ([, r]) => cell(r && r.last_error ? `${fmt.time(r.last_error_at)}: ${r.last_error}` : '', null, 'text wrap'),
    ], '');
    $('#failing-hours').hidden = !d.failing_hours.length;
    fillBody($('#failing-table tbody'), d.failing_hours, [
      (h) => cell(h.hour, fmt.time, 'text'),
      (h) => cell(h.failing_since, fmt.time, 'text'),
      (h) => cell(h.failures, fmt.int),
      (h) => cell(h.next_retry_at, fmt.time, 'text'),
      (h) => cell(h.last_error, null, 'text wrap'),
    ], '');
  }

  // Alerts: firing rules first, then the others by how much attention they need.
  const ALERT_ORDER = ['firing', 'pending', 'error', 'no_data', 'resolved', 'ok'];
  const SIGNS = {gt: '>', ge: '≥', lt: '<', le: '≤'};
  const stateCell = (s) => el('td', {class: 'text state-' + s + (s === 'firing' || s === 'error' ? ' failed' : s === 'ok' || s === 'resolved' ? ' ok' : ''), value: s, text: s.replace('_', ' ')});

  function condition(spec) {
    const scope = spec.scope === 'everything' ? 'everything' : `${spec.scope.replace('_', ' ')} ${spec.scope_value}`;
    return `${spec.metric} of ${scope} ${SIGNS[spec.comparison] || spec.comparison} ${spec.threshold} over ${spec.window_minutes} min`;
  }

  function renderAlerts(d) {
    const rules = d.rules.slice().sort((a, b) => ALERT_ORDER.indexOf(a.state) - ALERT_ORDER.indexOf(b.state) || a.id - b.id);
    fillBody($('#alerts-table tbody'), rules, [
      (r) => stateCell(r.state),
      (r) => cell(r.spec.name, null, 'text'),
      (r) => cell(condition(r.spec), null, 'text wrap'),
      (r) => cell(r.last_value, fmt.dec),
      (r) => cell(r.last_samples, fmt.int),
      (r) => cell(r.state_since, fmt.time, 'text'),
    ], 'No alert rules (generation-analytics alerts create)');
  }

  function renderAlertEvents(d) {
    fillBody($('#alert-events-table tbody'), d.events, [
      (e) => cell(e.at, fmt.time, 'text'),
      (e) => cell(e.rule_name, null, 'text'),
      (e) => stateCell(e.from_state),
      (e) => stateCell(e.to_state),
      (e) => cell(e.value, fmt.dec),
      (e) => cell(e.samples, fmt.int),
    ], 'No transitions yet');
  }

  const activityColumns = (withUser) => [
    (e) => cell(e.timestamp, fmt.time, 'text'),
    (e) => cell(e.event_type, null, 'text'),
    ...(withUser ? [(e) => el('td', {class: 'text', value: e.user_id}, userLink(e.user_id))] : []),
    (e) => cell(e.model_checkpoint, null, 'text'),
    (e) => cell(e.duration_ms, fmt.ms),
    (e) => outcome(e.success, e.event_type),
    (e) => {
      const td = cell(e.error_type, null, 'text');
      if (e.error_message) td.title = e.error_message;
      return td;
    },
  ];

  // Event rows carry the event's id (data-id), as the API numbers them.
  function fillEvents(tbody, events, withUser, empty) {
    fillBody(tbody, events, activityColumns(withUser), empty);
    $$('tr', tbody).forEach((tr, i) => {
      if (events[i]) tr.dataset.id = String(events[i].id);
    });
  }

  function renderEvents(d) {
    fillEvents($('#events-table tbody'), d.events, true, 'No events match');
    $('#page-number').textContent = `page ${state.page + 1}`;
    $('#page-prev').disabled = state.page === 0;
    $('#page-first').disabled = state.page === 0;
    $('#page-next').disabled = !d.next_page_token;
    for (const input of $$('#event-filters [name]')) input.removeAttribute('aria-invalid');
    if (scrollToEvents) {
      scrollToEvents = false;
      $('[data-panel="events"]').scrollIntoView({block: 'start'});
    }
  }

  function renderUser(d) {
    $('#user-id').textContent = d.user_id;
    fillTiles($('#user-tiles'), USER_TILES, d, null);
    $('#user-span').textContent = d.first_generation_at
      ? `first generation ${fmt.time(d.first_generation_at)} UTC · last ${fmt.time(d.last_generation_at)} UTC`
      : 'No generations in this window.';
    fillBody($('#user-failures tbody'), d.failure_breakdown, [(f) => cell(f.error_type, null, 'text'), (f) => cell(f.count, fmt.int)], 'No failures');
    $('#user-failures tfoot').replaceChildren(
      ...(d.other_failures
        ? [el('tr', {}, cell(`(others: ${fmt.int(d.total_error_types - d.failure_breakdown.length)} more)`, null, 'text'), cell(d.other_failures, fmt.int))]
        : []),
    );
    fillBody($('#user-models tbody'), d.models_used, [(m) => cell(m.model_checkpoint, null, 'text'), (m) => cell(m.count, fmt.int)], 'No checkpoints');
    $('#user-models tfoot').replaceChildren(
      ...(d.other_model_uses
        ? [el('tr', {}, cell(`(others: ${fmt.int(d.total_models - d.models_used.length)} more)`, null, 'text'), cell(d.other_model_uses, fmt.int))]
        : []),
    );
    fillEvents($('#user-activity tbody'), d.recent_activity, false, 'No events in this window');
  }

  function eventsQuery() {
    const query = new URLSearchParams({days: String(state.days)});
    for (const [name, value] of Object.entries(state.filters)) if (value !== '') query.set(name, value);
    const token = state.pages[state.page];
    if (token) query.set('page_token', token);
    return 'events?' + query;
  }

  const PANELS = {
    overview: {
      // With comparisons in the API, the previous equal window comes along (shown beside each tile).
      query: () => `overview?days=${state.days}${config.features.compare_previous ? '&compare_previous=true' : ''}`,
      render: renderOverview,
    },
    trends: {query: () => `trends?days=${state.days}&interval=${state.interval}`, render: renderTrends},
    models: {query: () => `models?days=${state.days}`, render: renderModels},
    failures: {query: () => `failures?days=${state.days}`, render: renderFailures},
    peak: {query: () => `peak-hours?days=${state.days}`, render: renderPeak},
    users: {query: () => `users?days=${state.days}&limit=10`, render: renderUsers},
    pipeline: {query: () => 'pipeline/status', render: renderPipeline},
    alerts: {query: () => 'alerts/rules', render: renderAlerts},
    'alert-events': {query: () => 'alerts/events?page_size=10', render: renderAlertEvents},
    events: {query: eventsQuery, render: renderEvents},
    user: {query: () => `users/${encodeURIComponent(state.user)}?days=${state.days}`, render: renderUser},
  };

  function showError(section, error) {
    const box = $('.panel-error', section);
    box.textContent = `Could not load: ${error.message}`;
    box.hidden = false;
    if (error.field) {
      const input = $(`#event-filters [name="${CSS.escape(error.field)}"]`, section);
      if (input) input.setAttribute('aria-invalid', 'true');
    }
  }

  async function runPanel(name) {
    const panel = PANELS[name];
    const section = $(`[data-panel="${name}"]`);
    const query = panel.query();
    const seq = (seqs[name] || 0) + 1;
    seqs[name] = seq;
    section.dataset.state = section.dataset.query === query && section.dataset.state !== 'loading' ? 'refreshing' : 'loading';
    try {
      const data = await api(query);
      await pageReady; // uPlot loads after this script, while the first answers are on their way
      if (seqs[name] !== seq) return;
      last[name] = data;
      panel.render(data);
      $('.panel-error', section).hidden = true;
      section.dataset.query = query;
      section.dataset.state = 'ready';
      if (!(name in window.gaDashboard.readyMs)) window.gaDashboard.readyMs[name] = performance.now();
    } catch (error) {
      if (seqs[name] !== seq) return;
      if (!(error instanceof ApiError)) console.error('dashboard: panel', name, error); // a bug of the page
      showError(section, error);
      section.dataset.query = query;
      section.dataset.state = 'error';
    }
  }

  async function refreshAll() {
    clearTimeout(timer);
    document.body.dataset.busy = '1';
    await Promise.all((state.user ? USER_PANELS : MAIN_PANELS).map(runPanel));
    refreshes += 1;
    lastRefreshAt = Date.now();
    document.body.dataset.busy = '0';
    document.body.dataset.refreshes = String(refreshes);
    const refreshed = $('#refreshed');
    refreshed.textContent = new Date(lastRefreshAt).toISOString().slice(11, 19) + ' UTC';
    if (document.body.dataset.state !== 'ready') {
      window.gaDashboard.firstRenderMs = performance.now();
      document.body.dataset.state = 'ready';
    }
    schedule();
  }

  function schedule() {
    clearTimeout(timer);
    if ($('#auto').checked && refreshS > 0 && !document.hidden) timer = setTimeout(refreshAll, refreshS * 1000);
  }

  // ------------------------------------------------------------------ navigation: #days=7&interval=hourly&user=…
  function readHash() {
    const hash = new URLSearchParams(location.hash.slice(1));
    const days = hash.get('days');
    if (days === '1' || days === '7' || days === '30') {
      if (Number(days) !== state.days) resetPages();
      state.days = Number(days);
    }
    const interval = hash.get('interval');
    if (interval === 'hourly' || interval === 'daily') state.interval = interval;
    state.user = hash.get('user') || '';
  }

  function writeHash(changes) {
    const hash = new URLSearchParams({days: String(state.days), interval: state.interval});
    if (state.user) hash.set('user', state.user);
    for (const [name, value] of Object.entries(changes)) {
      if (value) hash.set(name, value);
      else hash.delete(name);
    }
    location.hash = hash.toString();
  }

  function resetPages() {
    state.pages = [''];
    state.page = 0;
  }

  function show() {
    $('#days').value = String(state.days);
    $('#interval').value = state.interval;
    const label = `· last ${state.days} day${state.days === 1 ? '' : 's'}`;
    for (const node of $$('.window-label')) node.textContent = label;
    const switching = $('#user-view').hidden === Boolean(state.user);
    $('#main-view').hidden = Boolean(state.user);
    $('#user-view').hidden = !state.user;
    if (switching && !scrollToEvents) window.scrollTo(0, 0); // a new view opens at its top
    document.title = state.user ? `User ${state.user} · Generation Analytics` : 'Generation Analytics';
    if (state.user) $('[data-panel="user"]').dataset.state = 'loading';
  }

  function onHashChange() {
    readHash();
    show();
    refreshAll();
  }

  // ------------------------------------------------------------------ controls
  function readFilters() {
    const form = $('#event-filters');
    const filters = {};
    for (const input of $$('[name]', form)) filters[input.name] = input.value.trim();
    return filters;
  }

  function wire() {
    $('#days').addEventListener('change', (e) => writeHash({days: e.target.value}));
    $('#interval').addEventListener('change', (e) => writeHash({interval: e.target.value}));
    $('#refresh').addEventListener('click', () => refreshAll());
    $('#auto').addEventListener('change', schedule);
    $('#home').addEventListener('click', (e) => {
      e.preventDefault();
      writeHash({user: ''});
    });
    $('#user-view .back').addEventListener('click', (e) => {
      e.preventDefault();
      writeHash({user: ''});
    });
    $('#user-all-events').addEventListener('click', () => {
      const form = $('#event-filters');
      form.reset();
      form.elements.user_id.value = state.user;
      state.filters = readFilters();
      resetPages();
      scrollToEvents = true;
      writeHash({user: ''});
    });
    $('#event-filters').addEventListener('submit', (e) => {
      e.preventDefault();
      state.filters = readFilters();
      resetPages();
      runPanel('events');
    });
    $('#filters-clear').addEventListener('click', () => {
      $('#event-filters').reset();
      state.filters = readFilters();
      resetPages();
      runPanel('events');
    });
    $('#page-next').addEventListener('click', () => {
      const token = last.events && last.events.next_page_token;
      if (!token) return;
      state.pages[state.page + 1] = token;
      state.page += 1;
      runPanel('events');
    });
    $('#page-prev').addEventListener('click', () => {
      if (state.page === 0) return;
      state.page -= 1;
      runPanel('events');
    });
    $('#page-first').addEventListener('click', () => {
      state.page = 0;
      runPanel('events');
    });
    for (const th of $$('#models-table th')) {
      $('button', th).addEventListener('click', () => {
        const key = th.dataset.key;
        state.sort = {key, dir: state.sort.key === key ? -state.sort.dir : key === 'model_checkpoint' ? 1 : -1};
        if (last.models) renderModels(last.models);
      });
    }
    window.addEventListener('hashchange', onHashChange);
    document.addEventListener('visibilitychange', () => {
      if (document.hidden) clearTimeout(timer);
      else if (Date.now() - lastRefreshAt >= refreshS * 1000) refreshAll();
      else schedule();
    });
    matchMedia('(prefers-color-scheme: dark)').addEventListener('change', rebuildCharts);
  }

  async function start() {
    try {
      config = {...config, ...JSON.parse($('meta[name="ga-config"]').content)};
    } catch (_) {
      // Not served by the gateway (a saved copy): the defaults, and a key is asked for on the first 401.
    }
    const override = new URLSearchParams(location.search).get('refresh');
    refreshS = override !== null && /^[0-9]+$/.test(override) ? Number(override) : config.refresh_s;
    $('#refresh-every').textContent = refreshS ? `${refreshS} s` : 'off';
    if (!refreshS) $('#auto').checked = false;
    buildTiles($('#tiles'), OVERVIEW_TILES);
    buildTiles($('#user-tiles'), USER_TILES);
    buildTiles($('#pipeline-tiles'), PIPELINE_TILES);
    buildHeatmap();
    state.filters = readFilters();
    wire();
    readHash();
    show();
    await refreshAll();
  }

  // For tests and the benchmark: what each panel last received and what each chart draws.
  window.gaDashboard = {
    state,
    last,
    charts,
    firstRenderMs: null, // when every panel had rendered its first answer (ms since navigation start)
    readyMs: {}, // when each panel first did
    series: (name) => (charts[name] ? {...charts[name].raw, x: Array.from(charts[name].data[0])} : null),
    refresh: refreshAll,
  };

  start();
})();
