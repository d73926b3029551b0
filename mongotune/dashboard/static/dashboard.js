// mongotune dashboard: polls the JSON API and redraws what changed (no page reloads).
// /            -> the study list (/api/studies)
// /study/NAME  -> one study (/api/study/NAME?since=GEN: only rows and charts changed after GEN)
// Every string from the database goes onto the page as text (el() builds nodes; nothing here sets
// innerHTML), so a name, value, reason or output line that looks like HTML shows as what it is.
(function () {
  'use strict';
  var app = document.getElementById('app');
  var POLL_MS = Number(app.dataset.pollMs) || 1000;
  var CONFIG = { displaylogo: false, responsive: true };
  var statusEl = document.getElementById('status');
  var MT = window.mtState = { gen: 0, boot: null, rows: new Map(), updates: 0, lastUpdateMs: null,
                              lastFetchMs: null, lastRenderMs: null, firstRenderMs: null, errors: 0,
                              rowUpdates: 0, lastRowsUpdateMs: null, chartUpdates: 0, lastChartsUpdateMs: null,
                              plotlyMs: null, tablesAt: null, fetchAt: null };

  // el('td', {class: 'num'}, 'text', node, ...): an element; strings and numbers become text nodes
  function el(tag, attrs) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      var v = attrs[k];
      if (v === null || v === undefined || v === false) return;
      if (k === 'class') node.className = String(v); else node.setAttribute(k, String(v));
    });
    for (var i = 2; i < arguments.length; i++) add(node, arguments[i]);
    return node;
  }
  function add(node, kid) {
    if (kid === null || kid === undefined) return;
    if (Array.isArray(kid)) kid.forEach(function (k) { add(node, k); });
    else node.appendChild(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  function text(v) { return v === null || v === undefined ? '' : String(v); }
  function num(v, d) { return (typeof v === 'number') ? (Math.abs(v) >= 1e4 || v === Math.round(v) ? String(v) : v.toPrecision(d || 4)) : (v === null || v === undefined ? '-' : text(v)); }
  function age(s) { return (typeof s === 'number') ? (s < 90 ? s.toFixed(1) + ' s' : (s / 60).toFixed(1) + ' min') : '-'; }
  // a state is one of a few known words; anything else gets no colour class
  var STATES = { ok: 1, failed: 1, running: 1, pruned: 1, queued: 1, idle: 1, lost: 1, stopped: 1 };
  function badge(s) { return el('span', { class: 'state' + (STATES[s] ? ' ' + s : '') }, text(s)); }
  function td(v, cls) { return el('td', { class: cls }, v); }
  function table(id, head, rows, empty) {
    if (!rows.length) return el('p', { class: 'empty', id: id }, empty);
    return el('table', { id: id }, el('thead', null, el('tr', null, head.map(function (h) { return el('th', null, text(h)); }))),
      el('tbody', null, rows));
  }
  // the children of #id become exactly these nodes (strings: text nodes)
  function fill(id) { var node = document.getElementById(id); node.replaceChildren.apply(node, [].slice.call(arguments, 1)); }
  function setStatus(msg, stale) { statusEl.textContent = msg; statusEl.className = stale ? 'stale' : ''; }
  function fmtParams(p) {
    var out = [];
    (function walk(o, pre) {
      Object.keys(o || {}).forEach(function (k) {
        var v = o[k];
        if (v && typeof v === 'object' && !Array.isArray(v)) walk(v, pre + k + '.');
        else out.push(pre + k + '=' + (typeof v === 'number' ? num(v, 3) : text(v)));
      });
    })(p, '');
    return out.join(', ');
  }
  // a trial's worker: host, GPU (a CPU worker has none) and pid, as the report's timeline names its lanes
  function worker(w) {
    if (!w) return '-';
    var gpu = w.gpu !== null && w.gpu !== undefined && w.gpu !== '' && w.gpu !== 'none' ? ' · GPU ' + text(w.gpu) : '';
    return text(w.host || w.id) + gpu + (w.pid !== null && w.pid !== undefined ? ' · pid ' + text(w.pid) : '');
  }

  // ------------------------------------------------------------ study list
  function studiesPage() {
    document.getElementById('title').textContent = 'mongotune studies';
    app.replaceChildren(
      el('section', { class: 'block wide' }, el('h2', null, 'Studies'), el('div', { id: 'studies' }, 'loading…')),
      el('section', { class: 'block wide', style: 'margin-top:16px' }, el('h2', null, 'Workers'), el('div', { id: 'workers' })));
    function tick() {
      fetch('/api/studies', { cache: 'no-store' }).then(function (r) { return r.json(); }).then(function (d) {
        var rows = d.studies.map(function (s) {
          var c = s.counts || {};
          return el('tr', { id: 'study-' + text(s.name) },
            td(el('a', { href: '/study/' + encodeURIComponent(text(s.name)) }, text(s.name))),
            td(text(s.objective) + (s.model ? ' / ' + text(s.model) : '')), td(text(s.status)),
            td(((c.ok || 0) + (c.failed || 0) + (c.pruned || 0)) + ' / ' + text(s.max_evals), 'num'),
            td(num(c.running || 0), 'num'), td(num(c.failed || 0), 'num'),
            td(s.best ? num(s.best.metric) + ' (trial ' + text(s.best.tid) + (s.best.pruned ? ', pruned' : '') + ')' : '-', 'num'), td(text(s.metric)),
            td(typeof s.utilisation === 'number' ? Math.round(s.utilisation * 100) + '%' : '-', 'num'));
        });
        fill('studies', table('studies-table',
          ['study', 'objective / model', 'status', 'finished', 'running', 'failed', 'best', 'metric', 'utilisation'], rows, 'no studies yet'));
        fill('workers', workersTable(d.workers));
        setStatus('updated ' + new Date().toLocaleTimeString(), false);
      }).catch(function (e) { MT.errors++; setStatus('dashboard unreachable: ' + e, true); })
        .then(function () { setTimeout(tick, Math.max(POLL_MS, 2000)); });
    }
    tick();
  }

  // doneLabel: what the count is of (every study listed, or this study's trials)
  function workersTable(ws, doneLabel) {
    var rows = (ws || []).map(function (w) {
      var cur = w.current ? text(w.current.study) + ' #' + text(w.current.tid) : '-';
      return el('tr', null, td(text(w.host)), td(text(w.pid), 'num'),
        td(w.gpu === null || w.gpu === undefined || w.gpu === 'none' ? 'cpu' : 'GPU ' + text(w.gpu)), td(badge(w.state)), td(cur),
        td(num(w.trials_done), 'num'), td(age(w.heartbeat_age_s), 'num'));
    });
    return table('workers-table', ['host', 'pid', 'device', 'state', 'current trial', doneLabel || 'trials done', 'heartbeat age'], rows, 'no workers seen in the last 5 minutes');
  }

  // ------------------------------------------------------------ one study
  // what moves with every trial first (cheap SVG charts); parallel coordinates (WebGL, the costliest to
  // draw) and the slices further down, drawn when scrolled to
  var ORDER = ['history', 'front', 'hypervolume', 'curves', 'importance', 'timeline', 'slices', 'parallel', 'confusion'];
  var WIDE = { history: 1, parallel: 1, slices: 1, timeline: 1 };
  var HEAVY = { parallel: 1, slices: 1 };  // the server sends these at most every few seconds

  // plotly.js (about 4.6 MB) downloads while the study's JSON is fetched and runs after the tables are drawn
  var plotlyReady = null;
  function loadPlotly() {
    if (!plotlyReady) {
      plotlyReady = new Promise(function (resolve, reject) {
        if (window.Plotly) { resolve(); return; }
        var s = document.createElement('script'), t0 = performance.now();
        s.src = '/static/plotly.min.js';
        s.onload = function () { MT.plotlyMs = performance.now() - t0; resolve(); };
        s.onerror = function () { reject(new Error('could not load plotly.js')); };
        document.head.appendChild(s);
      });
    }
    return plotlyReady;
  }
  function nextFrame() { return new Promise(function (r) { requestAnimationFrame(function () { setTimeout(r, 0); }); }); }

  function block(id, title, bodyId, extra) {
    return el('section', { class: 'block wide', id: id }, el('h2', null, title, extra), el('div', { id: bodyId }));
  }

  function studyPage(name) {
    // plotly.js is only fetched now (the page's preload link); it is run once the tables are set, as
    // compiling it holds the page up for a while
    document.getElementById('title').textContent = 'Study ' + name;
    app.replaceChildren(el('div', { class: 'cards', id: 'cards' }), el('div', { class: 'grid', id: 'grid' },
      block('running', 'Running trials', 'running-body'),
      ORDER.map(function (k) {
        return el('section', { class: 'chart' + (WIDE[k] ? ' wide' : ''), id: 'section-' + k, hidden: 'hidden' },
          el('h2'), el('p', { class: 'note' }), el('div', { class: 'plot', id: 'plot-' + k }));
      }),
      block('workers-section', 'Workers', 'workers'),
      block('trials-section', 'Latest trials ', 'trials', el('span', { class: 'count', id: 'trial-count' })),
      block('failures', 'Failed trials', 'failures-body')));
    function tick() {
      var t0 = performance.now();
      fetch('/api/study/' + encodeURIComponent(name) + (MT.gen ? '?since=' + MT.gen : ''), { cache: 'no-store' })
        .then(function (r) {
          if (r.status === 404) return r.json().then(function (e) { throw new Error(e.error); });
          return r.json();
        })
        .then(function (p) {
          var t1 = performance.now();
          if (MT.fetchAt === null) MT.fetchAt = t1;  // ms from navigation: the first payload is in
          if (MT.boot && p.boot !== MT.boot && !p.full) { MT.gen = 0; MT.rows.clear(); MT.boot = p.boot; return null; }
          MT.boot = p.boot;
          var done = apply(p);
          return done.light.then(function () {
            var t2 = performance.now();
            MT.lastFetchMs = t1 - t0; MT.lastRenderMs = t2 - t1; MT.lastUpdateMs = t2 - t0; MT.updates++;
            if (!p.full && p.trials.length) { MT.rowUpdates++; MT.lastRowsUpdateMs = t2 - t0; }
            if (MT.firstRenderMs === null) MT.firstRenderMs = t2;
            setStatus('generation ' + p.gen + ' · updated ' + new Date().toLocaleTimeString() + ' · ' + Math.round(t2 - t0) + ' ms', false);
            return done.all;
          }).then(function () { MT.chartUpdates++; MT.lastChartsUpdateMs = performance.now() - t0; });
        })
        .catch(function (e) { MT.errors++; setStatus('cannot update: ' + e.message, true); })
        .then(function () { setTimeout(tick, POLL_MS); });
    }
    tick();
  }

  function header(s) {
    var bits = [el('a', { href: '/' }, 'all studies'), ' · objective ' + text(s.objective)];
    if (s.model) bits.push(' · model ' + text(s.model));
    if (s.dataset) bits.push(' · dataset ' + text(s.dataset));
    bits.push(' · metric ' + text(s.metric) + ' (' + text(s.goal) + ') · status ' + text(s.status));
    fill.apply(null, ['subtitle'].concat(bits));
  }

  function cards(s, sum, total) {
    var best = sum.best, u = (sum.utilisation || {}).utilisation, c = sum.counts || {};
    var items = [['trials', total + (s.max_evals ? ' / ' + text(s.max_evals) : '')], ['ok', c.ok], ['failed', c.failed],
      ['pruned', c.pruned], ['running', c.running], ['queued', c.queued],
      ['best ' + text(s.metric), best && best.metric !== null ? num(best.metric) : '-'], ['best trial', best ? best.tid : '-'],
      ['pool utilisation', typeof u === 'number' ? Math.round(u * 100) + '%' : '-']];
    if (sum.front) items.push(['Pareto front', sum.front.length + ' trials']);
    if (typeof sum.infeasible === 'number') items.push(['infeasible', sum.infeasible]);
    fill.apply(null, ['cards'].concat(items.map(function (kv) {
      return el('div', { class: 'card', 'data-key': kv[0] }, el('div', { class: 'k' }, kv[0]),
        el('div', { class: 'v' }, text(kv[1] === undefined ? 0 : kv[1])));
    })));
  }

  function runningRow(r) {
    var pr = r.progress || {}, m = [];
    Object.keys(pr).forEach(function (k) { if (k !== 'epoch' && k !== 'epochs' && k !== 'last_output' && typeof pr[k] === 'number') m.push(k + ' ' + num(pr[k])); });
    var epoch = pr.epoch ? text(pr.epoch) + (pr.epochs ? ' / ' + text(pr.epochs) : '') : '-';
    return el('tr', { id: 'running-' + text(r.tid) }, td(text(r.tid), 'num'), td(worker(r.worker)), td(epoch, 'num'),
      td(age(r.heartbeat_age_s), 'num'), td(m.join(', ')), td(el('code', null, text(r.last_output))),
      td(typeof r.attempts === 'number' ? r.attempts + 1 : '-', 'num'));
  }

  function trialRow(r) {
    var state = r.feasible === false ? [badge(r.state), ' ', el('span', { class: 'state infeasible' }, 'infeasible')] : [badge(r.state)];
    return el('tr', { id: 'trial-' + text(r.tid), 'data-state': text(r.state) }, td(text(r.tid), 'num'), td(state),
      td(num(r.loss, 5), 'num'), td(num(r.metric, 5), 'num'), td(worker(r.worker)), td(fmtParams(r.params)));
  }

  function failures(list) {
    var fails = list.slice(-50).reverse();
    var note = list.length > fails.length ? el('p', { class: 'note' }, 'the latest 50 of ' + list.length) : null;
    var t = table('failures-table', ['trial', 'kind', 'reason', 'worker', 'attempts'], fails.map(function (f) {
      return el('tr', null, td(text(f.tid), 'num'), td(text(f.kind)), td(text(f.reason)), td(text(f.worker || '-')),
        td(text(f.attempts), 'num'));
    }), 'no failed trials');
    if (note) fill('failures-body', note, t); else fill('failures-body', t);
  }

  function apply(p) {
    if (p.full) MT.rows.clear();
    p.trials.forEach(function (t) { MT.rows.set(t.tid, t); });
    MT.gen = p.gen;
    var s = p.study, sum = p.summary || {};
    var total = typeof sum.trials === 'number' ? sum.trials : MT.rows.size;
    header(s);
    cards(s, sum, total);
    fill('running-body', table('running-table',
      ['trial', 'worker', 'epoch', 'heartbeat age', 'latest metrics', 'last output', 'attempt'],
      p.running.map(runningRow), 'no trial is running'));
    fill('workers', workersTable(p.workers, 'trials done here'));
    var all = Array.from(MT.rows.values()).sort(function (a, b) { return b.tid - a.tid; });
    document.getElementById('trial-count').textContent = '(' + total + ' in all)';
    fill('trials', table('trials-table', ['trial', 'state', 'loss', text(s.metric), 'worker', 'params'],
      all.slice(0, 25).map(trialRow), 'no trials yet'));
    failures(p.failures);
    if (MT.tablesAt === null) MT.tablesAt = performance.now();  // ms from navigation: the tables are on the page
    p.charts.forEach(function (ch) {
      var sec = document.getElementById('section-' + ch.key);
      if (!sec) return;
      sec.hidden = false;
      sec.querySelector('h2').textContent = text(ch.title);
      sec.querySelector('.note').textContent = text(ch.note);
      var plot = document.getElementById('plot-' + ch.key);
      plot.dataset.empty = text(ch.empty);
      PENDING[ch.key] = { fig: ch.figure, gen: p.gen };
      if (!plot.style.minHeight) plot.style.minHeight = (Number(ch.figure.layout.height) || 300) + 'px';
      observer.observe(plot);
    });
    // charts are drawn when on screen, one at a time in page order, after the tables have been painted
    // (an off-screen chart keeps its newest figure and is drawn when scrolled to); `light` is done when
    // the tables and the charts that follow every trial are drawn, `all` once the heavy ones are too
    var shown = ORDER.filter(function (k) { return PENDING[k] && VISIBLE[k]; });
    var light = Promise.all(shown.filter(function (k) { return !HEAVY[k]; }).map(draw));
    return { light: light, all: light.then(function () {
      return Promise.all(shown.filter(function (k) { return HEAVY[k]; }).map(draw));
    }) };
  }

  var PENDING = {}, VISIBLE = {}, queue = Promise.resolve();
  function draw(key) {
    queue = queue.then(nextFrame).then(loadPlotly).then(function () {
      var job = PENDING[key];
      if (!job) return null;
      delete PENDING[key];
      var plot = document.getElementById('plot-' + key);
      return Plotly.react(plot, job.fig.data, job.fig.layout, CONFIG).then(function () {
        plot.dataset.rendered = '1'; plot.dataset.gen = String(job.gen);
      }, function (err) { plot.dataset.rendered = 'error'; console.error('chart ' + key + ': ' + err); });
    }).catch(function (err) { console.error('chart ' + key + ': ' + err); });
    return queue;
  }
  var observer = new IntersectionObserver(function (entries) {
    entries.forEach(function (e) {
      var key = e.target.id.replace(/^plot-/, '');
      VISIBLE[key] = e.isIntersecting;
      if (e.isIntersecting && PENDING[key]) draw(key);
    });
  }, { rootMargin: '150px' });

  var m = location.pathname.match(/^\/study\/(.+)$/);
  if (m) studyPage(decodeURIComponent(m[1])); else studiesPage();
})();
