// mongotune dashboard: polls the JSON API and redraws what changed (no page reloads).
// /            -> the study list (/api/studies)
// /study/NAME  -> one study (/api/study/NAME?since=GEN: only rows and charts changed after GEN)
(function () {
  'use strict';
  var POLL_MS = window.MT_POLL_MS || 1000;
  var CONFIG = { displaylogo: false, responsive: true };
  var app = document.getElementById('app');
  var statusEl = document.getElementById('status');
  var MT = window.mtState = { gen: 0, boot: null, rows: new Map(), updates: 0, lastUpdateMs: null,
                              lastFetchMs: null, lastRenderMs: null, firstRenderMs: null, errors: 0,
                              rowUpdates: 0, lastRowsUpdateMs: null, chartUpdates: 0, lastChartsUpdateMs: null,
                              plotlyMs: null, tablesAt: null, fetchAt: null };

  function esc(v) {
    return String(v === null || v === undefined ? '' : v).replace(/[&<>"']/g, function (c) {
      return { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c];
    });
  }
  function num(v, d) { return (typeof v === 'number') ? (Math.abs(v) >= 1e4 || v === Math.round(v) ? String(v) : v.toPrecision(d || 4)) : (v === null || v === undefined ? '-' : esc(v)); }
  function age(s) { return (typeof s === 'number') ? (s < 90 ? s.toFixed(1) + ' s' : (s / 60).toFixed(1) + ' min') : '-'; }
  function badge(s) { return '<span class="state ' + esc(s) + '">' + esc(s) + '</span>'; }
  function table(id, head, rows, empty) {
    if (!rows.length) return '<p class="empty" id="' + id + '">' + esc(empty) + '</p>';
    return '<table id="' + id + '"><thead><tr>' + head.map(function (h) { return '<th>' + esc(h) + '</th>'; }).join('') +
      '</tr></thead><tbody>' + rows.join('') + '</tbody></table>';
  }
  function setStatus(text, stale) { statusEl.textContent = text; statusEl.className = stale ? 'stale' : ''; }
  function fmtParams(p) {
    var out = [];
    (function walk(o, pre) {
      Object.keys(o || {}).forEach(function (k) {
        var v = o[k];
        if (v && typeof v === 'object' && !Array.isArray(v)) walk(v, pre + k + '.');
        else out.push(pre + k + '=' + (typeof v === 'number' ? num(v, 3) : esc(v)));
      });
    })(p, '');
    return out.join(', ');
  }
  function worker(w) { return w ? esc(w.host || w.id) + (w.gpu !== null && w.gpu !== undefined && w.gpu !== '' ? ' · GPU ' + esc(w.gpu) : '') : '-'; }

  // ------------------------------------------------------------ study list
  function studiesPage() {
    document.getElementById('title').textContent = 'mongotune studies';
    app.innerHTML = '<section class="block wide"><h2>Studies</h2><div id="studies">loading…</div></section>' +
      '<section class="block wide" style="margin-top:16px"><h2>Workers</h2><div id="workers"></div></section>';
    function tick() {
      fetch('/api/studies', { cache: 'no-store' }).then(function (r) { return r.json(); }).then(function (d) {
        var rows = d.studies.map(function (s) {
          var c = s.counts || {};
          return '<tr id="study-' + esc(s.name) + '"><td><a href="/study/' + encodeURIComponent(s.name) + '">' + esc(s.name) + '</a></td><td>' +
            esc(s.objective) + (s.model ? ' / ' + esc(s.model) : '') + '</td><td>' + esc(s.status) + '</td><td class=num>' +
            ((c.ok || 0) + (c.failed || 0) + (c.pruned || 0)) + ' / ' + esc(s.max_evals) + '</td><td class=num>' + (c.running || 0) +
            '</td><td class=num>' + (c.failed || 0) + '</td><td class=num>' + (s.best ? num(s.best.metric) + ' (trial ' + s.best.tid + ')' : '-') +
            '</td><td>' + esc(s.metric) + '</td><td class=num>' + (typeof s.utilisation === 'number' ? Math.round(s.utilisation * 100) + '%' : '-') + '</td></tr>';
        });
        document.getElementById('studies').innerHTML = table('studies-table',
          ['study', 'objective / model', 'status', 'finished', 'running', 'failed', 'best', 'metric', 'utilisation'], rows, 'no studies yet');
        document.getElementById('workers').innerHTML = workersTable(d.workers);
        setStatus('updated ' + new Date().toLocaleTimeString(), false);
      }).catch(function (e) { MT.errors++; setStatus('dashboard unreachable: ' + e, true); })
        .then(function () { setTimeout(tick, Math.max(POLL_MS, 2000)); });
    }
    tick();
  }

  function workersTable(ws) {
    var rows = (ws || []).map(function (w) {
      var cur = w.current ? esc(w.current.study) + ' #' + esc(w.current.tid) : '-';
      return '<tr><td>' + esc(w.host) + '</td><td class=num>' + esc(w.pid) + '</td><td>' + (w.gpu === null || w.gpu === undefined ? 'cpu' : 'GPU ' + esc(w.gpu)) +
        '</td><td>' + badge(w.state) + '</td><td>' + cur + '</td><td class=num>' + num(w.trials_done) + '</td><td class=num>' + age(w.heartbeat_age_s) + '</td></tr>';
    });
    return table('workers-table', ['host', 'pid', 'device', 'state', 'current trial', 'trials done', 'heartbeat age'], rows, 'no workers seen in the last 5 minutes');
  }

  // ------------------------------------------------------------ one study
  // what moves with every trial first (cheap SVG charts); parallel coordinates (WebGL, the costliest to
  // draw) and the slices further down, drawn when scrolled to
  var ORDER = ['history', 'curves', 'importance', 'timeline', 'slices', 'parallel', 'confusion'];
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

  function studyPage(name) {
    // plotly.js is only fetched now (the page's preload link); it is run once the tables are set, as
    // compiling it holds the page up for a while
    document.getElementById('title').textContent = 'Study ' + name;
    app.innerHTML = '<div class="cards" id="cards"></div>' +
      '<div class="grid" id="grid">' +
      '<section class="block wide" id="running"><h2>Running trials</h2><div id="running-body"></div></section>' +
      ORDER.map(function (k) {
        return '<section class="chart' + (WIDE[k] ? ' wide' : '') + '" id="section-' + k + '" hidden><h2></h2><p class="note"></p><div class="plot" id="plot-' + k + '"></div></section>';
      }).join('') +
      '<section class="block wide" id="workers-section"><h2>Workers</h2><div id="workers"></div></section>' +
      '<section class="block wide" id="trials-section"><h2>Latest trials <span class="count" id="trial-count"></span></h2><div id="trials"></div></section>' +
      '<section class="block wide" id="failures"><h2>Failed trials</h2><div id="failures-body"></div></section></div>';
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

  function apply(p) {
    if (p.full) MT.rows.clear();
    p.trials.forEach(function (t) { MT.rows.set(t.tid, t); });
    MT.gen = p.gen;
    var s = p.study, sum = p.summary || {}, c = sum.counts || {};
    document.getElementById('subtitle').innerHTML = '<a href="/">all studies</a> · objective ' + esc(s.objective) +
      (s.model ? ' · model ' + esc(s.model) : '') + (s.dataset ? ' · dataset ' + esc(s.dataset) : '') +
      ' · metric ' + esc(s.metric) + ' (' + esc(s.goal) + ') · status ' + esc(s.status);
    var best = sum.best, u = (sum.utilisation || {}).utilisation;
    var total = typeof sum.trials === 'number' ? sum.trials : MT.rows.size;
    var cards = [['trials', total + (s.max_evals ? ' / ' + s.max_evals : '')], ['ok', c.ok], ['failed', c.failed],
      ['pruned', c.pruned], ['running', c.running], ['queued', c.queued],
      ['best ' + s.metric, best && best.metric !== null ? num(best.metric) : '-'], ['best trial', best ? best.tid : '-'],
      ['pool utilisation', typeof u === 'number' ? Math.round(u * 100) + '%' : '-']];
    document.getElementById('cards').innerHTML = cards.map(function (kv) {
      return '<div class="card" data-key="' + esc(kv[0]) + '"><div class="k">' + esc(kv[0]) + '</div><div class="v">' + esc(kv[1] === undefined ? 0 : kv[1]) + '</div></div>';
    }).join('');
    document.getElementById('running-body').innerHTML = table('running-table',
      ['trial', 'worker', 'epoch', 'heartbeat age', 'latest metrics', 'last output', 'attempt'],
      p.running.map(function (r) {
        var pr = r.progress || {}, m = [];
        Object.keys(pr).forEach(function (k) { if (k !== 'epoch' && k !== 'epochs' && k !== 'last_output' && typeof pr[k] === 'number') m.push(k + ' ' + num(pr[k])); });
        return '<tr id="running-' + r.tid + '"><td class=num>' + r.tid + '</td><td>' + worker(r.worker) + '</td><td class=num>' +
          (pr.epoch ? pr.epoch + (pr.epochs ? ' / ' + pr.epochs : '') : '-') + '</td><td class=num>' + age(r.heartbeat_age_s) +
          '</td><td>' + esc(m.join(', ')) + '</td><td><code>' + esc(r.last_output || '') + '</code></td><td class=num>' + (r.attempts + 1) + '</td></tr>';
      }), 'no trial is running');
    document.getElementById('workers').innerHTML = workersTable(p.workers);
    var all = Array.from(MT.rows.values()).sort(function (a, b) { return b.tid - a.tid; });
    document.getElementById('trial-count').textContent = '(' + total + ' in all)';
    document.getElementById('trials').innerHTML = table('trials-table', ['trial', 'state', 'loss', s.metric, 'worker', 'params'],
      all.slice(0, 25).map(function (r) {
        return '<tr id="trial-' + r.tid + '" data-state="' + esc(r.state) + '"><td class=num>' + r.tid + '</td><td>' + badge(r.state) +
          '</td><td class=num>' + num(r.loss, 5) + '</td><td class=num>' + num(r.metric, 5) + '</td><td>' + worker(r.worker) +
          '</td><td>' + fmtParams(r.params) + '</td></tr>';
      }), 'no trials yet');
    var fails = p.failures.slice(-50).reverse();
    document.getElementById('failures-body').innerHTML = (p.failures.length > fails.length ? '<p class="note">the latest 50 of ' + p.failures.length + '</p>' : '') +
      table('failures-table', ['trial', 'kind', 'reason', 'worker', 'attempts'],
      fails.map(function (f) {
        return '<tr><td class=num>' + f.tid + '</td><td>' + esc(f.kind) + '</td><td>' + esc(f.reason) + '</td><td>' + esc(f.worker || '-') + '</td><td class=num>' + f.attempts + '</td></tr>';
      }), 'no failed trials');
    if (MT.tablesAt === null) MT.tablesAt = performance.now();  // ms from navigation: the tables are on the page
    p.charts.forEach(function (ch) {
      var sec = document.getElementById('section-' + ch.key);
      if (!sec) return;
      sec.hidden = false;
      sec.querySelector('h2').textContent = ch.title;
      sec.querySelector('.note').textContent = ch.note || '';
      var el = document.getElementById('plot-' + ch.key);
      el.dataset.empty = ch.empty || '';
      PENDING[ch.key] = { fig: ch.figure, gen: p.gen };
      if (!el.style.minHeight) el.style.minHeight = (ch.figure.layout.height || 300) + 'px';
      observer.observe(el);
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
      var el = document.getElementById('plot-' + key);
      return Plotly.react(el, job.fig.data, job.fig.layout, CONFIG).then(function () {
        el.dataset.rendered = '1'; el.dataset.gen = String(job.gen);
      }, function (err) { el.dataset.rendered = 'error'; console.error('chart ' + key + ': ' + err); });
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
