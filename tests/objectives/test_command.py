"""The command objective with real child processes.

The ``Ctx`` below is the objective's own interface (what a worker hands it),
written as a plain recording class; nothing here stands in for MongoDB or a worker.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from mongotune.errors import ConfigError, TrialFailure, TrialPruned
from mongotune.objectives.command import (CommandSettings, MetricParser, make_settings, parse_duration, parse_param,
                                          parse_params, render, run, run_command)

PY = sys.executable


class Ctx:
    """Records what the objective reports; prunes or stops when told to."""

    def __init__(self, trial_dir: Path, *, gpu=None, prune_at_step=None, stop_when=None):
        trial_dir.mkdir(parents=True, exist_ok=True)
        self.tid, self.attempt, self.study = 7, 2, "study-x"
        self.artifacts_dir = str(trial_dir)
        self.gpu = gpu
        self.steps: list[tuple[int, float]] = []
        self.progress: list[dict] = []
        self._prune_at = prune_at_step
        self._stop_when = stop_when

    def should_stop(self) -> bool:
        return bool(self._stop_when and self._stop_when())

    def report_step(self, step: int, value: float) -> bool:
        self.steps.append((step, value))
        return self._prune_at is not None and step >= self._prune_at

    def set_progress(self, info: dict) -> None:
        self.progress.append(info)


def script(tmp_path: Path, body: str, name: str = "job.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def settings(argv, metric="val_accuracy", **kw) -> CommandSettings:
    kw.setdefault("kill_grace_s", 2.0)
    return CommandSettings(command=argv, metric=metric, **kw)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_dead(pids, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end and any(alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


# ------------------------------------------------------------------ grammar


@pytest.mark.parametrize("spec, name, node", [
    ("lr:1e-4:1e-1", "lr", {"hp": "uniform", "low": 1e-4, "high": 0.1}),
    ("lr:1e-4:1e-1:log", "lr", {"hp": "loguniform", "low": 1e-4, "high": 0.1}),
    ("layers:1:6:int", "layers", {"hp": "quniform", "low": 1, "high": 6, "q": 1, "int": True}),
    ("drop:0:0.5:q=0.05", "drop", {"hp": "quniform", "low": 0.0, "high": 0.5, "q": 0.05}),
    ("lr:1e-4:1e-1:log:q=1e-4", "lr", {"hp": "qloguniform", "low": 1e-4, "high": 0.1, "q": 1e-4}),
    ("units:16:512:log:int", "units", {"hp": "qloguniform", "low": 16, "high": 512, "q": 1, "int": True}),
    ("opt:adam,sgd,rmsprop", "opt", {"hp": "choice", "options": ["adam", "sgd", "rmsprop"]}),
    ("batch:32,64,128", "batch", {"hp": "choice", "options": [32, 64, 128]}),
    ("epochs:20", "epochs", 20),
])
def test_param_grammar(spec, name, node):
    assert parse_param(spec) == (name, node)


def test_params_build_a_space_hyperopt_samples():
    from hyperopt.pyll.stochastic import sample

    from mongotune.search.spaces import build

    space = parse_params(["lr:1e-4:1e-1:log", "layers:1:6:int", "drop:0:0.5:q=0.05", "opt:adam,sgd"])
    for seed in range(20):
        p = sample(build(space), rng=__import__("numpy").random.default_rng(seed))
        assert 1e-4 <= p["lr"] <= 0.1 and p["opt"] in ("adam", "sgd")
        assert isinstance(p["layers"], int) and 1 <= p["layers"] <= 6
        assert abs(p["drop"] / 0.05 - round(p["drop"] / 0.05)) < 1e-9


@pytest.mark.parametrize("spec, says", [
    ("lr", "expected NAME:"),
    ("lr:", "nothing after"),
    ("1lr:0:1", "not a param name"),
    ("lr:a:1", "for a categorical param write lr:a,b,c"),
    ("lr:0:x", "high 'x' is not a number"),
    ("lr:1:0", "low must be < high"),
    ("lr:0:1:log", "log scale needs low > 0"),
    ("lr:0:1:cubic", "unknown or repeated modifier 'cubic'"),
    ("lr:0:1:q=0", "q must be > 0"),
    ("n:0:10:int:q=0.5", "int needs a whole q"),
    ("opt:adam,,sgd", "empty option"),
    ("opt:adam,adam", "listed twice"),
])
def test_param_errors_are_one_line(spec, says):
    with pytest.raises(ConfigError) as err:
        parse_param(spec)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_duplicate_param_is_refused():
    with pytest.raises(ConfigError, match="lr is defined twice"):
        parse_params(["lr:0:1"], base={"lr": {"hp": "uniform", "low": 0, "high": 1}})


@pytest.mark.parametrize("command, says", [
    ("python t.py --lr {lrr}", "placeholder {lrr} has no --param"),
    ("python t.py --lr :lrr:", "placeholder :lrr: has no --param"),
    ("python t.py --x {1bad}", "unknown placeholder {1bad}"),
    ("python t.py --x '{print $1}'", "unknown placeholder"),
    ("python t.py 'unclosed", "cannot split"),
])
def test_template_errors(command, says, tmp_path):
    with pytest.raises(ConfigError) as err:
        make_settings(command, metric="acc", params=["lr:0:1"], cwd=tmp_path)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_settings_errors(tmp_path):
    ok = dict(metric="acc", params=["lr:0:1"], cwd=tmp_path)
    for kw, says in [(dict(goal="up"), "goal"), (dict(aggregate="median"), "aggregation"),
                     (dict(timeout="soon"), "not a duration"), (dict(workdir="nope"), "not a directory"),
                     (dict(metric="val acc"), "not a metric name"), (dict(params=[]), "needs a search space")]:
        with pytest.raises(ConfigError, match=says):
            make_settings("echo {lr}", **{**ok, **kw})
    (tmp_path / "train.py").write_text("")
    with pytest.raises(ConfigError, match="train.py is a relative path.*--workdir"):
        make_settings("python train.py --lr {lr}", **ok)
    s, space = make_settings("python train.py --lr {lr}", **ok, workdir=".", timeout="1h30m")
    assert s.workdir == str(tmp_path.resolve()) and s.timeout_s == 5400 and set(space) == {"lr"}
    assert CommandSettings.from_doc(json.loads(json.dumps(s.to_doc()))) == s
    stored = SimpleNamespace(objective=json.loads(json.dumps(s.objective_doc())), metric=s.metric_doc())
    assert stored.objective["kind"] == "command" and "metric" not in stored.objective
    assert CommandSettings.from_study(stored) == s


def test_durations():
    assert [parse_duration(x) for x in ("90", "90s", "15m", "2h", "1h30m", "1d", 5)] == \
        [90, 90, 900, 7200, 5400, 86400, 5]
    for bad in ("", "0", "h", "-5", "2 hours"):
        with pytest.raises(ConfigError):
            parse_duration(bad)


def test_render_fills_both_placeholder_styles_and_escapes():
    argv = ["python", "t.py", "--lr={lr}", "--layers", ":layers:", "--opt", "{opt}", "{{literal}}",
            "cuda:0:x", "--nested", "{net.units}"]
    params = {"lr": 0.001, "layers": 3, "opt": "adam", "net": {"units": 64}}
    assert render(argv, params) == ["python", "t.py", "--lr=0.001", "--layers", "3", "--opt", "adam",
                                    "{literal}", "cuda:0:x", "--nested", "64"]
    # inside `sh -c SCRIPT` a value is shell-quoted; elsewhere it is one argv element, as it is
    assert render(["sh", "-c", "echo {v}", "{v}"], {"v": "a; b"}) == ["sh", "-c", "echo 'a; b'", "a; b"]


# ----------------------------------------------------------- metric parsing


def test_metric_lines_of_all_three_forms():
    p = MetricParser("val_accuracy")
    lines = [
        "epoch 1 val_accuracy=0.5",
        "32/32 ━━━━━━━━━━━━━━━━━━━━ 0s 3ms/step - accuracy: 0.8901 - loss: 0.3612 - val_accuracy: 0.9123 - val_loss: 0.29",
        '{"val_accuracy": 0.75, "step": 10}',
        "val_accuracy = 7.5e-1",
        '{"epoch": 20, "val_accuracy": 1}',
        "nothing here",
        "my_val_accuracy=0.1 val_accuracy_top5=0.3",
        '{"loss": 0.3, "step": 99}',
        "val_accuracy=nan",
    ]
    got = [p.parse(line) for line in lines]
    assert got[:6] == [(1, 0.5), (2, 0.9123), (10, 0.75), (11, 0.75), (20, 1.0), None]
    assert got[6] is None and got[7] is None
    assert got[8][0] == 21 and got[8][1] != got[8][1]  # nan is a reading too (the run fails on it)
    assert MetricParser("accuracy").parse(lines[1]) == (1, 0.8901)  # not val_accuracy's value


# ------------------------------------------------------------- real children


METRIC_SCRIPT = """
    import json, os, sys
    vals = [float(v) for v in sys.argv[1].split(",")]
    print("starting", flush=True)
    print("val_accuracy=" + str(vals[0]))
    print("10/10 - 0s - accuracy: 0.99 - val_accuracy: " + str(vals[1]) + " - val_loss: 0.3")
    print(json.dumps({"val_accuracy": vals[2], "step": 7}))
    print("done", file=sys.stderr)
"""


@pytest.mark.parametrize("agg, expected", [("last", 0.7), ("max", 0.9), ("min", 0.5), ("mean", 0.7)])
def test_reads_every_form_and_aggregates(tmp_path, agg, expected):
    job = script(tmp_path, METRIC_SCRIPT)
    ctx = Ctx(tmp_path / "trial")
    res = run_command(settings([PY, job, "{vals}"], aggregate=agg), {"vals": "0.5,0.9,0.7"}, ctx)
    assert ctx.steps == [(1, 0.5), (2, 0.9), (7, 0.7)]
    assert res["status"] == "ok" and res["val_accuracy"] == pytest.approx(expected)
    assert res["loss"] == pytest.approx(-expected) and res["readings"] == 3 and res["last_step"] == 7
    assert "val_accuracy=0.5" in (tmp_path / "trial" / "stdout.log").read_text()
    assert (tmp_path / "trial" / "stderr.log").read_text() == "done\n"
    # the last line the command wrote (stdout and stderr arrive on separate pipes: either may come last)
    assert ctx.progress[-1]["last_output"] in ("done", '{"val_accuracy": 0.7, "step": 7}')


def test_goal_min_keeps_the_metric_as_loss(tmp_path):
    job = script(tmp_path, 'print("val_loss: 0.25")\nprint("val_loss: 0.5")\n')
    s = settings([PY, job], metric="val_loss", goal="min", aggregate="min")
    study = SimpleNamespace(objective=s.objective_doc(), metric=s.metric_doc())  # as a study document holds it
    res = run(study, {}, Ctx(tmp_path / "t"))
    assert res["loss"] == 0.25 and res["val_loss"] == 0.25 and res["exit_code"] == 0


ENV_SCRIPT = """
    import json, os
    keys = ["CUDA_VISIBLE_DEVICES", "MONGOTUNE_TRIAL_ID", "MONGOTUNE_STUDY", "MONGOTUNE_ATTEMPT", "MONGOTUNE_PARAMS",
            "MONGOTUNE_TRIAL_DIR", "MONGOTUNE_MONGO_PASSWORD", "PYTHONUNBUFFERED"]
    with open(os.path.join(os.environ["MONGOTUNE_TRIAL_DIR"], "env.json"), "w") as fh:
        json.dump({"cwd": os.getcwd(), **{k: os.environ.get(k) for k in keys}}, fh)
    print("val_accuracy=1")
"""


def test_child_sees_gpu_trial_env_and_runs_in_its_trial_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MONGOTUNE_MONGO_PASSWORD", "s3cret")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    job = script(tmp_path, ENV_SCRIPT)
    ctx = Ctx(tmp_path / "trial", gpu="3")
    params = {"lr": 0.01, "opt": "sgd"}
    run_command(settings([PY, job]), params, ctx)
    env = json.loads((tmp_path / "trial" / "env.json").read_text())
    assert env["CUDA_VISIBLE_DEVICES"] == "3"
    assert env["cwd"] == os.path.realpath(tmp_path / "trial") == os.path.realpath(env["MONGOTUNE_TRIAL_DIR"])
    assert (env["MONGOTUNE_TRIAL_ID"], env["MONGOTUNE_STUDY"], env["MONGOTUNE_ATTEMPT"]) == ("7", "study-x", "2")
    assert json.loads(env["MONGOTUNE_PARAMS"]) == params
    assert env["MONGOTUNE_MONGO_PASSWORD"] is None and env["PYTHONUNBUFFERED"] == "1"


def test_workdir_is_the_cwd_and_the_trial_dir_still_comes_by_env(tmp_path):
    job = script(tmp_path, ENV_SCRIPT)
    work = tmp_path / "work"
    work.mkdir()
    run_command(settings([PY, job], workdir=str(work)), {}, Ctx(tmp_path / "trial"))
    env = json.loads((tmp_path / "trial" / "env.json").read_text())
    assert env["cwd"] == os.path.realpath(work)
    assert os.path.realpath(env["MONGOTUNE_TRIAL_DIR"]) == os.path.realpath(tmp_path / "trial")
    assert env["CUDA_VISIBLE_DEVICES"] == os.environ.get("CUDA_VISIBLE_DEVICES")  # no GPU given: inherited


def test_failing_command_records_exit_code_and_stderr_tail(tmp_path):
    job = script(tmp_path, """
        import sys
        print("val_accuracy=0.5")
        for i in range(40):
            print(f"trace line {i}", file=sys.stderr)
        sys.exit(3)
    """)
    with pytest.raises(TrialFailure) as err:
        run_command(settings([PY, job]), {}, Ctx(tmp_path / "t"))
    assert err.value.kind == "exit" and "exited with code 3" in err.value.reason
    assert "trace line 39" in err.value.reason and "trace line 5\n" not in err.value.reason


def test_missing_program_fails_the_trial(tmp_path):
    with pytest.raises(TrialFailure) as err:
        run_command(settings([str(tmp_path / "no-such-program")]), {}, Ctx(tmp_path / "t"))
    assert err.value.kind == "exec" and "no-such-program" in err.value.reason


def test_timeout_terminates_and_fails(tmp_path):
    job = script(tmp_path, """
        import os, sys, time
        open(os.environ["MONGOTUNE_TRIAL_DIR"] + "/pid", "w").write(str(os.getpid()))
        print("val_accuracy=0.5")
        print("about to hang", file=sys.stderr, flush=True)
        time.sleep(300)
    """)
    ctx = Ctx(tmp_path / "t")
    with pytest.raises(TrialFailure) as err:
        run_command(settings([PY, job], timeout_s=1.5), {}, ctx)
    assert err.value.kind == "timeout" and "timeout of 1.5 s" in err.value.reason
    assert "about to hang" in err.value.reason
    assert not alive(int((tmp_path / "t" / "pid").read_text()))


def test_no_metric_fails_with_what_it_printed(tmp_path):
    job = script(tmp_path, 'print("accuracy=0.9")\nprint("training finished")\n')
    with pytest.raises(TrialFailure) as err:
        run_command(settings([PY, job]), {}, Ctx(tmp_path / "t"))
    assert err.value.kind == "no-metric" and "no val_accuracy reading" in err.value.reason
    assert "training finished" in err.value.reason


def test_nan_metric_stops_the_run(tmp_path):
    job = script(tmp_path, 'import time\nprint("val_accuracy=0.2")\nprint("val_accuracy=nan")\ntime.sleep(300)\n')
    ctx = Ctx(tmp_path / "t")
    with pytest.raises(TrialFailure) as err:
        run_command(settings([PY, job]), {}, ctx)
    assert err.value.kind == "nan" and ctx.steps == [(1, 0.2)]


ECHO_ARGS = """
    import json, os, sys
    with open(os.environ["MONGOTUNE_TRIAL_DIR"] + "/argv.json", "w") as fh:
        json.dump(sys.argv[1:], fh)
    print("val_accuracy=1")
"""


@pytest.mark.parametrize("value", ["a; touch {m}", "$(touch {m})", "`touch {m}`", "x' ; touch {m}; echo '",
                                   "a && touch {m}", "| touch {m}"])
def test_no_injection_through_a_categorical_value(tmp_path, value):
    marker = tmp_path / "pwned"
    value = value.format(m=marker)
    job = script(tmp_path, ECHO_ARGS)
    space = {"opt": {"hp": "choice", "options": [value]}}
    s, _ = make_settings([PY, job, "--opt", "{opt}", "--also=:opt:"], metric="val_accuracy", space=space)
    run_command(s, {"opt": value}, Ctx(tmp_path / "t"))
    assert json.loads((tmp_path / "t" / "argv.json").read_text()) == ["--opt", value, f"--also={value}"]
    # a template that asks for a shell gets the value shell-quoted: still one word, nothing runs
    s, _ = make_settings(["sh", "-c", f"{PY} {job} --opt {{opt}}"], metric="val_accuracy", space=space)
    run_command(s, {"opt": value}, Ctx(tmp_path / "t2"))
    assert json.loads((tmp_path / "t2" / "argv.json").read_text()) == ["--opt", value]
    assert not marker.exists()


FOREVER = """
    import os, signal, subprocess, sys, time
    d = os.environ["MONGOTUNE_TRIAL_DIR"]
    if os.environ.get("IGNORE_TERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    kids = []
    if os.environ.get("GRANDCHILDREN"):
        code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"
        kids.append(subprocess.Popen([sys.executable, "-c", code]))                          # same group
        kids.append(subprocess.Popen([sys.executable, "-c", code], start_new_session=True))  # left the group
    with open(d + "/pids.tmp", "w") as fh:
        fh.write(" ".join(str(p) for p in [os.getpid()] + [k.pid for k in kids]))
    os.rename(d + "/pids.tmp", d + "/pids")
    step = 0
    while True:
        step += 1
        print(f"val_accuracy={step / 1000}")
        time.sleep(0.02)
"""


def pids_of(trial: Path) -> list[int]:
    f = trial / "pids"
    return [int(p) for p in f.read_text().split()] if f.exists() else []


def test_pruning_stops_the_child_mid_run(tmp_path):
    job = script(tmp_path, FOREVER)
    ctx = Ctx(tmp_path / "t", prune_at_step=5)
    with pytest.raises(TrialPruned) as err:
        run_command(settings([PY, job]), {}, ctx)
    assert (err.value.step, err.value.value) == (5, 0.005)
    assert err.value.result["loss"] == -0.005 and err.value.result["readings"] == 5  # what the search learns
    assert ctx.steps == [(i, i / 1000) for i in range(1, 6)]
    assert wait_dead(pids_of(tmp_path / "t"), timeout=0) == []


def test_should_stop_leaves_no_child_or_grandchild_alive(tmp_path, monkeypatch):
    monkeypatch.setenv("IGNORE_TERM", "1")  # everyone ignores SIGTERM: only the SIGKILL after the grace ends them
    monkeypatch.setenv("GRANDCHILDREN", "1")
    job = script(tmp_path, FOREVER)
    trial = tmp_path / "t"
    ctx = Ctx(trial, stop_when=lambda: len(pids_of(trial)) == 3)
    with pytest.raises(TrialFailure) as err:
        run_command(settings([PY, job], kill_grace_s=0.5), {}, ctx)
    assert err.value.kind == "interrupted"
    pids = pids_of(trial)
    assert len(pids) == 3
    assert wait_dead(pids, timeout=0) == []


def test_background_processes_of_a_finished_command_are_ended(tmp_path):
    job = script(tmp_path, """
        import os, subprocess, sys
        d = os.environ["MONGOTUNE_TRIAL_DIR"]
        kid = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        open(d + "/pids", "w").write(str(kid.pid))
        print("val_accuracy=0.8")
    """)
    res = run_command(settings([PY, job]), {}, Ctx(tmp_path / "t"))
    assert res["val_accuracy"] == 0.8
    assert wait_dead(pids_of(tmp_path / "t"), timeout=0) == []


def test_a_grandchild_holding_the_pipes_does_not_hang_the_trial(tmp_path):
    job = script(tmp_path, """
        import os, subprocess, sys
        kid = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])  # inherits stdout
        open(os.environ["MONGOTUNE_TRIAL_DIR"] + "/pids", "w").write(str(kid.pid))
        print("val_accuracy=0.6", flush=True)
        os._exit(0)
    """)
    res = run_command(settings([PY, job]), {}, Ctx(tmp_path / "t"))
    assert res["val_accuracy"] == 0.6
    assert wait_dead(pids_of(tmp_path / "t"), timeout=0) == []


# ------------------------------------------------------------- shell forms


PRINT_ARGS = "printf '<%s>' "  # each word the shell ends up with, bracketed
NASTY = "a'b \"c\" $(touch {m}) `touch {m}` ; touch {m} \\ \n$HOME *"


@pytest.mark.parametrize("argv", [
    ["sh", "-c", PRINT_ARGS + "{x}"],
    ["sh", "-c", PRINT_ARGS + "'{x}'"],
    ["sh", "-c", PRINT_ARGS + '"{x}"'],
    ["bash", "-o", "pipefail", "-c", PRINT_ARGS + "{x} | cat"],
    ["bash", "-euo", "pipefail", "-c", PRINT_ARGS + '"{x}"'],
    ["bash", "--norc", "-c", PRINT_ARGS + "{x}"],
    ["bash", "-c", "-e", PRINT_ARGS + "{x}"],  # the script is the first argument after the options
    ["env", "sh", "-c", PRINT_ARGS + "{x}"],
    ["env", "LC_ALL=C", "/bin/sh", "-c", PRINT_ARGS + ":x:"],
    ["timeout", "60", "bash", "-c", PRINT_ARGS + "'{x}'"],
    ["timeout", "-s", "KILL", "60", "bash", "-lc", PRINT_ARGS + "pre{x}post"],
    ["nice", "-n", "5", "dash", "-c", PRINT_ARGS + '"pre {x} post"'],
    ["sh", "-c", "( " + PRINT_ARGS + "{x} )"],
])
def test_values_are_quoted_in_every_shell_form(tmp_path, argv):
    """Whatever wraps the shell and wherever the placeholder stands (bare, in '...', in "..."), the script
    sees the value as it is, as one word, and nothing in it runs."""
    marker = tmp_path / "pwned"
    value = NASTY.format(m=marker)
    space = {"x": {"hp": "choice", "options": [value]}}
    assert make_settings(argv, metric="v", space=space, check_paths=False)[0].command == argv  # launch takes it
    filled = render(argv, {"x": value})
    out = __import__("subprocess").run(filled, capture_output=True, text=True, timeout=60, check=True).stdout
    word = value if "pre" not in argv[-1] else ("pre" + value + "post" if "pre{" in argv[-1] else f"pre {value} post")
    assert out == f"<{word}>", (filled, out)
    assert not marker.exists()


@pytest.mark.parametrize("argv, says", [
    (["sh", "-c", "echo $(echo {x})"], "inside $(...)"),
    (["bash", "-c", 'echo "$(echo {x})"'], "inside $(...)"),
    (["sh", "-c", "echo `echo {x}`"], "inside backquotes"),
    (["sh", "-c", "echo ${X:-{x}}"], "inside ${...}"),
    (["bash", "-c", "echo $(( {x} + 1 ))"], "inside $((...))"),
    (["bash", "-c", "echo $'{x}'"], "inside $'...'"),
    (["sh", "-c", "cat <<EOF\n{x}\nEOF"], "here-document"),
    (["sh", "-c", "echo hi # {x}"], "in a comment"),
    (["sh", "-c", "echo \\{x}"], "after a backslash"),
    (["bash", "-c", 'echo "$(case a in a) echo {x};; esac)"'], "case statement"),
    (["env", "-S", "python t.py {x}"], "env -S splits its string"),
    (["flock", "/tmp/lock", "-c", "python t.py {x}"], "flock -c runs its string through a shell"),
    (["su", "me", "-c", "python t.py {x}"], "su -c runs its string"),
    (["ssh", "gpu-box", "python", "t.py", "{x}"], "remote host's shell"),
    (["watch", "-n", "5", "python", "t.py", ":x:"], "watch runs its command"),
    (["fish", "-c", "python t.py {x}"], "fish -c runs a fish script"),
])
def test_placeholders_a_shell_would_misread_are_refused_at_launch(tmp_path, argv, says):
    space = {"x": {"hp": "choice", "options": ["a"]}}
    with pytest.raises(ConfigError) as err:
        make_settings(argv, metric="v", space=space, check_paths=False)
    assert says in str(err.value) and "\n" not in str(err.value)
    # and a study that reached a worker anyway (written to the database by other means) fails with the reason
    with pytest.raises(TrialFailure) as failed:
        run_command(settings(argv), {"x": "a"}, Ctx(tmp_path / "t"))
    assert failed.value.kind == "config" and says in failed.value.reason


def test_the_child_sees_no_database_variable(tmp_path, monkeypatch):
    for name, value in [("MONGOTUNE_MONGO", "mongodb://u@db/x"), ("MONGOTUNE_MONGO_FILE", "/run/url"),
                        ("MONGOTUNE_MONGO_PASSWORD", "s3cret"), ("MONGOTUNE_MONGO_PASSWORD_FILE", "/run/pw"),
                        ("MONGOTUNE_MONGO_ANYTHING_NEW", "x")]:
        monkeypatch.setenv(name, value)
    job = script(tmp_path, """
        import json, os
        json.dump(sorted(k for k in os.environ if k.startswith("MONGOTUNE")),
                  open(os.path.join(os.environ["MONGOTUNE_TRIAL_DIR"], "keys.json"), "w"))
        print("val_accuracy=1")
    """)
    run_command(settings([PY, job]), {}, Ctx(tmp_path / "t"))
    keys = json.loads((tmp_path / "t" / "keys.json").read_text())
    assert not [k for k in keys if k.startswith("MONGOTUNE_MONGO")], keys
    assert "MONGOTUNE_TRIAL_ID" in keys and "MONGOTUNE_RUN_TOKEN" in keys


# ------------------------------------------------------------- bounded output


def test_a_chatty_child_is_read_in_bounded_memory_with_few_reports(tmp_path):
    """200,000 metric lines and a 20 MB line without a newline: every reading is aggregated, the worker is
    handed a few a second (the last one always), and the objective's memory stays small."""
    import tracemalloc

    job = script(tmp_path, """
        import sys
        w = sys.stdout.write
        w("x" * 20_000_000)  # one huge line
        w(" val_accuracy=0.001\\n")  # ... whose end is past what is parsed: no reading
        for i in range(1, 200_001):
            w(f"batch {i} loss=0.3 val_accuracy={i / 200_000:.6f}\\n")
    """)
    ctx = Ctx(tmp_path / "t")
    tracemalloc.start()
    started = time.monotonic()
    try:
        res = run_command(settings([PY, job], aggregate="mean"), {}, ctx)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    took = time.monotonic() - started
    assert res["readings"] == 200_000 and res["val_accuracy"] == pytest.approx(0.5, abs=1e-5)
    assert ctx.steps[-1] == (200_000, 1.0)  # the last reading always reaches the worker
    assert len(ctx.steps) <= 5 + 4 * took + 2, (len(ctx.steps), took)
    assert [s for s, _ in ctx.steps] == sorted(s for s, _ in ctx.steps)
    assert peak < 40 * 2 ** 20, peak  # the queue of unparsed output is bounded (about 8 MB at most)
    assert (tmp_path / "t" / "stdout.log").stat().st_size > 20_000_000  # the log keeps everything


def test_readings_the_pruner_needs_are_not_coalesced_away(tmp_path):
    """Steps where the pruner decides (ASHA's rungs) reach the worker at once, however fast they come."""
    job = script(tmp_path, "for i in range(1, 3001):\n    print(f'val_accuracy={i / 3000}')\n")
    ctx = Ctx(tmp_path / "t")
    rungs = {1, 3, 9, 27, 81, 243, 729, 2187}
    ctx.extra = {"must_report": lambda step: step in rungs}
    run_command(settings([PY, job]), {}, ctx)
    steps = [s for s, _ in ctx.steps]
    assert rungs <= set(steps) and steps[-1] == 3000 and len(steps) < 100


def test_a_study_of_several_metrics_takes_each_from_the_output(tmp_path):
    """issue 22: every objective's and constraint's metric is read from the lines (its last reading)."""
    job = script(tmp_path, 'print("acc=0.5 size=7")\nprint("acc: 0.75")\nprint(\'{"size": 3, "lat": 2}\')\n')
    s = settings([PY, job], metric="acc", goal="max")
    study = SimpleNamespace(objective=s.objective_doc(), metric=s.metric_doc(),
                            objectives=[s.metric_doc(), {"name": "size", "goal": "min"}],
                            constraints=[{"metric": "lat", "op": "<=", "bound": 1.0}])
    res = run(study, {}, Ctx(tmp_path / "t"))
    assert res["acc"] == 0.75 and res["size"] == 3 and res["lat"] == 2 and res["loss"] == -0.75
