"""Pure parts of environments and version skew: ids, policies, source shipping, skew messages."""

from __future__ import annotations

import json
import math

import pytest

from rexec import serialization as ser
from rexec.client.skew import check_skew, local_info, ships_source
from rexec.requirements import (
    RequirementsError,
    RequirementsPolicy,
    environment_id,
    parse_requirements,
)
from rexec.worker import environment as envs

FACTOR = 2.5


def scaled_sqrt(x: float) -> float:
    return math.sqrt(x) * FACTOR


def test_installer_arguments_keep_requirements_after_a_double_dash():
    parsed = parse_requirements(
        "--extra-index-url https://example.org/simple\nnumpy>=1.26\n",
        RequirementsPolicy(allow_options=True),
    )
    assert parsed.installer_arguments() == [
        "--extra-index-url",
        "https://example.org/simple",
        "--",
        "numpy>=1.26",
    ]
    with pytest.raises(RequirementsError, match="option --target is not allowed"):
        parse_requirements("--target /etc", RequirementsPolicy(allow_options=True))
    with pytest.raises(RequirementsError, match="one option per line"):
        parse_requirements("--pre --index-url x", RequirementsPolicy(allow_options=True))


def test_policy_comes_from_operator_variables():
    assert RequirementsPolicy.from_env({}) == RequirementsPolicy()
    policy = RequirementsPolicy.from_env({"REXEC_ENV_ALLOW_URLS": "yes"})
    assert policy == RequirementsPolicy(allow_options=False, allow_urls=True)
    assert parse_requirements("pkg @ https://example.org/p.whl", policy).requirements


def test_environment_ids_ignore_order_comments_and_name_spelling():
    one = environment_id(parse_requirements("Six==1.16.0\nidna"), "3.11")
    assert one == environment_id(["idna  # any", "six==1.16.0"], "3.11")
    assert one != environment_id(["idna", "six==1.16.0"], "3.12")
    assert environment_id([], "3.11") == "base"


def test_resolve_says_what_a_switch_would_do(tmp_path, monkeypatch):
    monkeypatch.setenv(envs.ENV_ROOT_ENV, str(tmp_path))
    assert envs.resolve([]).status == "active"  # the tests run in the base environment
    target = envs.resolve(["six==1.16.0"])
    assert target.status == "built" and target.python.startswith(str(tmp_path / target.env_id))
    (tmp_path / target.env_id).mkdir()
    assert envs.resolve(["six==1.16.0"]).status == "built"  # incomplete: never trusted
    (tmp_path / target.env_id / envs.MARKER).write_text("{}")
    assert envs.resolve(["six==1.16.0"]).status == "cached"
    with pytest.raises(RequirementsError):
        envs.resolve(["--index-url http://evil.example"])


def test_functions_travel_as_source_with_modules_and_plain_globals():
    data = ser.dumps_function(scaled_sqrt, by_source=True)
    spec = json.loads(data[len(b"rexec-fn-source ") :])
    assert spec["modules"] == {"math": "math"} and "FACTOR" in spec["values"]
    assert "def scaled_sqrt" in spec["source"]
    rebuilt = ser.loads_function(data)
    assert rebuilt is not scaled_sqrt and rebuilt(16.0) == 10.0


def test_what_cannot_travel_as_source_says_why():
    with pytest.raises(ser.SourceUnavailable, match="lambda"):
        ser.dumps_function(lambda: 1, by_source=True)
    base = 3

    def closure() -> int:
        return base

    with pytest.raises(ser.SourceUnavailable, match="enclosing function"):
        ser.dumps_function(closure, by_source=True)
    shipper = ser.FunctionShipper()
    shipper.by_source = True
    with pytest.raises(ser.SourceUnavailable, match="another Python version"):
        shipper.pack(lambda: 2)


def test_code_from_another_python_is_refused_not_run():
    data = ser.dumps_function(scaled_sqrt)
    assert ser.loads_function(data)(4.0) == 5.0
    _, _, body = data.partition(b"\n")
    foreign = b"rexec-fn-dill 3.99\n" + body
    with pytest.raises(ser.VersionSkewError, match=r"Python 3\.99"):
        ser.loads_function(foreign)
    with pytest.raises(ser.VersionSkewError, match=r"Python 3\.99"):
        ser.load_by_value(body, "3.99")
    with pytest.raises(ValueError, match="same rexec"):
        ser.loads_function(body)


def test_shipper_keys_change_with_the_mode():
    shipper = ser.FunctionShipper()
    by_value, _ = shipper.pack(scaled_sqrt)
    shipper.by_source = True
    by_source, data = shipper.pack(scaled_sqrt)
    assert by_value != by_source and data.startswith(b"rexec-fn-source ")


def test_skew_messages_name_both_sides_and_the_fix():
    mine = {**local_info(), "python_minor": "3.11", "cloudpickle": "3.0.0"}
    worker = {**mine, "python_minor": "3.12", "cloudpickle": "2.1.0"}
    problems = check_skew(worker, mine)
    assert any(
        "worker runs Python 3.12, your notebook 3.11" in p and "source" in p for p in problems
    )
    assert any("pip install cloudpickle==3.0.0" in p for p in problems)
    assert ships_source(worker, mine) and not ships_source(mine, mine)
    assert not ships_source({}, mine)


def test_notebook_helpers_travel_as_source_too():
    import linecache

    src = (
        "import math\nK = 2\n\ndef helper(x):\n    return math.floor(x) * K\n\n"
        "def main(x):\n    return helper(x) + 1\n"
    )
    filename = "<notebook cell>"
    linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
    namespace: dict[str, object] = {"__name__": "__main__"}
    exec(compile(src, filename, "exec"), namespace)
    spec = ser.function_source(namespace["main"])
    assert set(spec["helpers"]) == {"helper"} and set(spec["helpers"]["helper"]["values"]) == {"K"}
    rebuilt = ser.loads_function(ser.dumps_function(namespace["main"], by_source=True))
    assert rebuilt(3.7) == 7


def test_a_worker_outside_its_environment_is_reported():
    mine = local_info()
    problems = check_skew({**mine, "env_error": "environment abc could not be built: ..."}, mine)
    assert len(problems) == 1 and "environment abc could not be built" in problems[0]
    assert "%rexec_env --reset" in problems[0]
