"""The command kind: tune any training command (``launch --command 'python train.py --lr {lr}' ...``).

The settings, the ``--param`` grammar, templates, metric lines and process trees are ``command``; this is
what the rest of mongotune asks of a command study: its options at launch, its metric (the one the
command prints), and that it runs the user's code.
"""

from __future__ import annotations

from ..errors import ConfigError
from .kinds import ObjectiveKind
from .launch import Built, LaunchOptions, check_grid


class CommandKind(ObjectiveKind):
    name = "command"
    runner = "mongotune.objectives.command:run"
    default_metric = {"name": "metric", "goal": "max"}
    user_code = True

    # ------------------------------------------------------------ launch
    def wanted(self, opts: LaunchOptions) -> bool:
        return opts.command is not None

    def check_options(self, opts: LaunchOptions) -> None:
        if opts.augment:
            raise ConfigError("--augment applies to the built-in models")

    def default_name(self, opts: LaunchOptions) -> str:
        raise ConfigError("a command study needs a name: give --study NAME")

    def _settings(self, opts: LaunchOptions, space: dict | None):
        from .command_settings import make_settings

        from .metrics import parse_metric

        if not opts.metric:
            raise ConfigError("a command study needs --metric NAME (what the command prints, e.g. val_accuracy)")
        first = parse_metric(opts.metric[0], opts.goal)
        return make_settings(opts.command, metric=first["name"], params=opts.param, space=space, goal=first["goal"],
                             aggregate=opts.metric_agg, timeout=opts.timeout, workdir=opts.workdir, cwd=opts.cwd,
                             checkpoint_every=opts.checkpoint_every)

    def known_metrics(self, opts: LaunchOptions) -> dict[str, str] | None:
        return None  # a command prints what it prints: any name it prints in metric lines

    def launch_metric(self, opts: LaunchOptions) -> dict | None:
        return None

    def check(self, opts: LaunchOptions, space: dict | None) -> None:
        _, full_space = self._settings(opts, space)
        check_grid(opts, full_space)

    def build(self, opts: LaunchOptions, core: dict, space: dict | None) -> Built:
        from ..store.studies import Study

        settings, full_space = self._settings(opts, space)
        study = Study(objective=settings.objective_doc(), metric=settings.metric_doc(), space=full_space,
                      **core).validate()
        return Built(study, "command " + " ".join(settings.command))

    # ------------------------------------------------------------ a study of this kind
    def describe(self, study) -> str:
        command = study.objective.get("command")
        return "command " + (" ".join(map(str, command)) if isinstance(command, list) else str(command))
