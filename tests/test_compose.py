"""compose.yaml: valid Compose, and the workers sign in as a least-privileged user.

There is no Docker engine here, so nothing is started: the file is interpolated the way Compose
does it, validated with the compose-spec package (PyPI; the Compose Specification's types, unknown
keys refused) and its wiring is checked: the application user the init script creates is the
one the workers' URL names, its password reaches them only through MONGOTUNE_MONGO_PASSWORD, and
the root password never reaches a worker.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from helpers import REPO

compose_spec = pytest.importorskip("compose_spec", reason="compose-spec (the test extra) is not installed: "
                                   "pip install -e '.[test]'; compose.yaml was NOT validated")

COMPOSE = REPO / "compose.yaml"
ENV = {"MONGO_ROOT_PASSWORD": "root-pw-1", "MONGO_APP_PASSWORD": "app-pw-2"}
_VAR = re.compile(r"\$(?:\$|\{(\w+)(?:(:?[-?])([^}]*))?\})")


def interpolate(text: str, env: dict) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error} and $$."""
    def sub(m):
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.groups()
        value = env.get(name)
        unset_or_empty = value is None or (op and op.startswith(":") and value == "")
        if op and op.endswith("-") and unset_or_empty:
            return arg
        if op and op.endswith("?") and unset_or_empty:
            raise KeyError(f"required variable {name} is missing a value: {arg}")
        return value or ""

    return _VAR.sub(sub, text)


@pytest.fixture(scope="module")
def compose():
    text = interpolate(COMPOSE.read_text(), ENV)
    parsed = compose_spec.PyCompose.from_yaml(text)
    parsed.validate()
    return yaml.safe_load(text)


def test_compose_is_valid_and_the_validator_is_strict():
    text = interpolate(COMPOSE.read_text(), ENV)
    compose_spec.PyCompose.from_yaml(text).validate()
    for bad in (text.replace("stop_grace_period:", "stop_grace_perod:"),
                text.replace("condition: service_healthy", "condition: healthy"),
                text.replace("read_only: true", "read_only: maybe")):
        assert bad != text
        with pytest.raises(ValueError):
            compose_spec.PyCompose.from_yaml(bad).validate()


def test_both_passwords_are_required():
    for missing in ENV:
        with pytest.raises(KeyError, match=missing):
            interpolate(COMPOSE.read_text(), {k: v for k, v in ENV.items() if k != missing})


def test_workers_use_the_application_user(compose):
    mongo, worker = compose["services"]["mongo"], compose["services"]["worker"]
    url = urlsplit(worker["environment"]["MONGOTUNE_MONGO"])
    assert url.password is None, "the password must not be in the URL"
    assert url.hostname == "mongo" and url.path == "/mongotune"
    assert parse_qs(url.query)["authSource"] == ["mongotune"]
    # the user the init script creates, with the password the workers are given
    assert url.username == mongo["environment"]["MONGO_APP_USER"]
    assert mongo["environment"]["MONGO_APP_DATABASE"] == "mongotune"
    assert worker["environment"]["MONGOTUNE_MONGO_PASSWORD"] == ENV["MONGO_APP_PASSWORD"]
    assert mongo["environment"]["MONGO_APP_PASSWORD"] == ENV["MONGO_APP_PASSWORD"]
    assert url.username != mongo["environment"]["MONGO_INITDB_ROOT_USERNAME"]
    # the root password stays in the mongo container
    assert ENV["MONGO_ROOT_PASSWORD"] not in yaml.safe_dump(worker)
    assert mongo["environment"]["MONGO_INITDB_ROOT_PASSWORD"] == ENV["MONGO_ROOT_PASSWORD"]


def test_init_script_is_mounted_where_the_mongo_image_runs_it(compose):
    binds = [v for v in compose["services"]["mongo"]["volumes"] if isinstance(v, dict)]
    (bind,) = binds
    assert bind["type"] == "bind" and bind["read_only"] is True
    target = bind["target"]
    assert target.startswith("/docker-entrypoint-initdb.d/") and target.endswith(".js")
    script = REPO / bind["source"]
    assert script.is_file()
    text = script.read_text()
    assert "MONGO_APP_PASSWORD" in text and 'role: "readWrite"' in text


def test_named_volumes_are_declared_and_the_grace_period_is_enough(compose):
    declared = set(compose["volumes"])
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes") or []:
            source = vol.split(":", 1)[0] if isinstance(vol, str) else vol["source"]
            if isinstance(vol, str) and not source.startswith((".", "/")):
                assert source in declared, (name, source)
    worker = compose["services"]["worker"]
    assert compose_spec.parse_duration(worker["stop_grace_period"]) >= 60
    assert worker["stop_signal"] == "SIGTERM"
