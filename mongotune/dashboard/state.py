"""What the dashboard keeps in memory: per study, its rows, charts and a change counter.

Each ``StudyView`` reads its study once in full, then only the trials that
changed (``TrialLoader``).  Every refresh that changes something bumps the
view's generation ``gen``; each row and each chart remembers the generation
it last changed in, so a browser that has seen generation G is sent only the
rows and charts changed after G.  Charts are rebuilt from memory (no reads)
when their inputs changed, and serialised once per rebuild.  The charts
that cost a browser most to redraw whatever the study's size (parallel
coordinates, a WebGL chart, and the slices) are rebuilt at most every
``heavy_every_s``; the history, learning curves and timeline follow every
trial.  Parameter importance (a random forest) is refitted in a background
thread, at most every ``importance_every_s``, so it never holds an update up.
"""

from __future__ import annotations

import datetime
import json
import threading
import time

from ..report import charts as ch
from ..report.study_data import TERMINAL, TrialLoader, TrialRow, done_counts, list_study_infos, server_now
from ..store.workers import WorkerRegistry


def _default(o):
    if isinstance(o, (datetime.datetime, datetime.date)):
        return o.isoformat()
    return str(o)


def dumps(obj) -> str:
    return json.dumps(obj, default=_default, separators=(",", ":"))


def _row_json(r: TrialRow) -> dict:
    d = r.to_json()
    d["curve_len"] = len(d.pop("curve") or [])  # curves travel inside the learning-curve chart
    return d


class StudyView:
    HEAVY = ("parallel", "slices")  # rebuilt at most every heavy_every_s (dashboard.js draws them last)
    LATEST = 50  # trials a full payload lists (by tid); an update sends every trial that changed

    def __init__(self, db, name: str, *, jobs: str = "jobs", min_interval_s: float = 0.3,
                 importance_every_s: float = 5.0, heavy_every_s: float = 5.0):
        self.db, self.name = db, name
        self.loader = TrialLoader(db, name, jobs=jobs)
        self.min_interval_s = min_interval_s
        self.importance_every_s = importance_every_s
        self.heavy_every_s = heavy_every_s
        self._heavy_dirty = False
        self._heavy_t = 0.0
        self.lock = threading.Lock()
        self.gen = 0
        self.row_gen: dict[int, int] = {}
        self.chart_gen: dict[str, int] = {}
        self.chart_json: dict[str, str] = {}
        self.charts: dict[str, ch.Chart] = {}
        self.summary: dict = {}
        self.workers: list[dict] = []
        self._last_refresh = 0.0
        self._importance: dict | str | None = None
        self._importance_n = -1  # finished trials the importance was computed from
        self._importance_t = 0.0
        self._importance_busy = False
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------ refresh
    def refresh(self, force: bool = False) -> None:
        with self.lock:
            if not force and self.gen and time.monotonic() - self._last_refresh < self.min_interval_s:
                return
            t0 = time.perf_counter()
            before = {tid: (r.state, bool(r.curve)) for tid, r in self.loader.rows.items()}
            changed = self.loader.refresh()
            t1 = time.perf_counter()
            now = self.loader.now
            rows = self.loader.sorted_rows()
            # a worker's count here is of this study's trials, read from the trials (never its own counter)
            self.workers = [w for w in WorkerRegistry(self.db).recent(now=now, done=done_counts(rows))
                            if w.get("study") in (None, self.name)
                            or (w.get("current") or {}).get("study") == self.name]
            first = self.gen == 0
            running = any(r.state == "running" for r in rows)
            if changed or first or running:
                self.gen += 1
            for r in changed:
                self.row_gen[r.tid] = self.gen
            finished = first or any(r.state in TERMINAL or before.get(r.tid, ("",))[0] in TERMINAL for r in changed)
            curves = first or any(r.curve or before.get(r.tid, ("", False))[1] for r in changed)
            info = self.loader.info
            rebuild = {"timeline": first or bool(changed) or running}
            if finished:
                rebuild.update(history=True, front=bool(info.objectives), hypervolume=bool(info.objectives))
                self._heavy_dirty = True
            if self._heavy_dirty and (first or time.monotonic() - self._heavy_t >= self.heavy_every_s):
                rebuild.update(dict.fromkeys(self.HEAVY, True))
                self._heavy_dirty = False
                self._heavy_t = time.monotonic()
            if curves:
                rebuild["curves"] = True
            builders = {"history": lambda: ch.history_chart(info, rows),
                        "parallel": lambda: ch.parallel_chart(info, rows),
                        "slices": lambda: ch.slice_chart(info, rows),
                        "curves": lambda: ch.curves_chart(info, rows),
                        "timeline": lambda: ch.timeline_chart(info, rows, now),
                        "front": lambda: ch.front_chart(info, rows),
                        "hypervolume": lambda: ch.hypervolume_chart(info, rows)}
            for key, build in builders.items():
                if rebuild.get(key):
                    self._set_chart(build())
            if first:
                self._set_chart(ch.importance_chart(info, rows, "computing…"))
            cm = ch.confusion_chart(info)
            if cm is not None and "confusion" not in self.charts:
                self._set_chart(cm)
            if changed or first or running:
                self.summary = ch.summary(info, rows, now)
            self._maybe_importance(info, rows)
            self._last_refresh = time.monotonic()
            self.timings = {"read_s": round(t1 - t0, 4), "build_s": round(time.perf_counter() - t1, 4),
                            "changed": len(changed)}

    def _set_chart(self, chart: ch.Chart) -> None:
        text = dumps(chart.to_json())
        if self.chart_json.get(chart.key) == text:
            return
        self.charts[chart.key] = chart
        self.chart_json[chart.key] = text
        self.chart_gen[chart.key] = self.gen

    def _maybe_importance(self, info, rows) -> None:
        n = sum(1 for r in rows if r.state in ("ok", "pruned") and r.metric is not None)
        if self._importance_busy or n == self._importance_n:
            return
        if self._importance_n >= 0 and time.monotonic() - self._importance_t < self.importance_every_s:
            return
        self._importance_busy = True
        snapshot = list(rows)

        def work():
            try:
                imp = ch.param_importance(info, snapshot)
            except Exception as exc:  # noqa: BLE001 - a chart must not take the dashboard down
                imp = f"importance failed: {type(exc).__name__}: {exc}"
            with self.lock:
                self._importance, self._importance_n = imp, n
                self._importance_t = time.monotonic()
                self._importance_busy = False
                self.gen += 1
                self._set_chart(ch.importance_chart(info, snapshot, imp))

        threading.Thread(target=work, name=f"importance-{self.name}", daemon=True).start()

    # ------------------------------------------------------------ what a browser gets
    def payload(self, since: int | None) -> str:
        """The JSON a browser that has seen generation ``since`` needs (everything when ``since`` is None)."""
        with self.lock:
            full = not since or since > self.gen
            rows = self.loader.sorted_rows()
            if full:  # the page lists the latest trials; the counts and charts cover the rest
                send = rows[-self.LATEST:]
            else:
                send = [r for r in rows if self.row_gen.get(r.tid, 0) > since]
            keys = [k for k in ("history", "front", "hypervolume", "parallel", "slices", "curves", "importance",
                                "timeline", "confusion")
                    if k in self.chart_json and (full or self.chart_gen.get(k, 0) > since)]
            running = [_row_json(r) for r in rows if r.state == "running"]
            head = {"gen": self.gen, "full": full, "study": self.loader.info.to_json(), "summary": self.summary,
                    "trials": [_row_json(r) for r in send], "running": running,
                    "failures": ch.failure_rows(rows), "workers": self.workers,
                    "server_time": self.loader.now, "timings": self.timings}
            text = dumps(head)
            charts = ",".join(self.chart_json[k] for k in keys)
        return text[:-1] + ',"charts":[' + charts + "]}"


class Dashboard:
    """All study views of one database, created on first use.

    The study list also holds the experiments of stock fmin jobs (exp_keys without a study document),
    looked for at most every ``experiments_every_s``: that read goes over every trial's exp_key."""

    def __init__(self, db, *, jobs: str = "jobs", experiments_every_s: float = 10.0):
        self.db, self.jobs = db, jobs
        self.views: dict[str, StudyView] = {}
        self.lock = threading.Lock()
        self.experiments_every_s = experiments_every_s
        self._experiments: list = []
        self._experiments_t: float | None = None

    def infos(self) -> list:
        """Every study, then the experiments of stock fmin jobs (re-read at most every experiments_every_s)."""
        infos = list_study_infos(self.db, jobs=self.jobs, experiments=False)
        t = time.monotonic()
        if self._experiments_t is None or t - self._experiments_t >= self.experiments_every_s:
            known = {i.name for i in infos}
            self._experiments = [i for i in list_study_infos(self.db, jobs=self.jobs)[len(infos):]
                                 if i.name not in known]
            self._experiments_t = t
        return infos + self._experiments

    def view(self, name: str) -> StudyView:
        with self.lock:
            v = self.views.get(name)
            if v is None:
                v = self.views[name] = StudyView(self.db, name, jobs=self.jobs)
        return v

    def studies(self) -> dict:
        infos = self.infos()
        now = server_now(self.db)
        out = []
        done: dict[str, int] = {}
        for info in infos:
            v = self.view(info.name)
            v.refresh()
            s = v.summary
            with v.lock:
                done_counts(v.loader.rows.values(), done)
            out.append({**{k: info.to_json()[k] for k in ("name", "objective", "model", "dataset", "metric", "goal",
                                                          "max_evals", "status", "created")},
                        "counts": s.get("counts"), "best": s.get("best"), "utilisation":
                            (s.get("utilisation") or {}).get("utilisation")})
        # every worker's count: the trials it finished in every study listed (read from the trials)
        return {"studies": out, "workers": WorkerRegistry(self.db).recent(now=now, done=done), "server_time": now}

    def warm(self) -> None:
        """Read every study once (the full first read), so the first page views are fast."""
        for info in self.infos():
            self.view(info.name).refresh()
