"""Files a local worker can rewrite (its status file, its log) never break the spawner's API.

A real spawner (uvicorn) runs a real worker process through the local backend; the test then
plays the worker's user code and writes hostile content where the worker reports its status.
Every route must still answer normally, with bounded info, and each problem is logged once.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rexec_spawner.app import create_app
from rexec_spawner.names import make_user_dir_name
from tests.support.servers import free_port, serve
from tests.support.spawner import SpawnerFixture, make_spawner_fixture

pytestmark = pytest.mark.integration

# A stand-in worker that stays up and writes nothing itself: the test writes its status file.
SLEEPER = (sys.executable, "-c", "import time; time.sleep(120)")
MAX_INFO_BYTES = 8 * 1024
MINOR = r"[0-9]+\.[0-9]+"
GOOD = {"state": "registered", "pid": 4242, "python": "3.11.7", "python_minor": "3.11"}


def json_bytes(value: object) -> bytes:
    return json.dumps(value).encode()


HOSTILE: dict[str, bytes] = {
    "python_minor as a dict": json_bytes({**GOOD, "python_minor": {"major": 3, "minor": 11}}),
    "python_minor as a huge string": json_bytes({**GOOD, "python_minor": "3" * 100_000}),
    "python_minor as a long string": json_bytes({**GOOD, "python_minor": "3." + "1" * 5000}),
    "python_minor with a command": json_bytes({**GOOD, "python_minor": "3.11; rm -rf ~"}),
    "python_minor as a number": json_bytes({**GOOD, "python_minor": 3.11}),
    "state as a list": json_bytes({**GOOD, "state": ["registered"]}),
    "state unknown": json_bytes({**GOOD, "state": "owned"}),
    "a 10 MB file": json_bytes({**GOOD, "padding": "x" * 10_000_000}),
    "invalid UTF-8": b'{"state": "registered", "host": "\xff\xfe\xfd"}',
    "deep nesting": b"[" * 10_000 + b"]" * 10_000,
    "deep nesting in a field": b'{"host": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    "not an object": b"[1, 2, 3]",
    "null": b"null",
    "not JSON": b"\x00\x01 not json at all",
    "empty": b"",
    "NaN and infinities": b'{"updated": NaN, "pid": Infinity, "x": -Infinity}',
    "a number too long to parse": b'{"state": "registered", "pid": 1' + b"0" * 5000 + b"}",
    "many fields": json_bytes({**GOOD, **{f"k{i}": i for i in range(1000)}}),
    "nested values": json_bytes({**GOOD, "rexec": {"a": [1, 2]}, "extra": [1] * 100}),
    "pid as a bool": json_bytes({**GOOD, "pid": True}),
}


@pytest.fixture
def stack(tmp_path: Path) -> SpawnerFixture:
    return make_spawner_fixture(
        tmp_path,
        users={"alice": ()},
        broker_backend_url=f"tcp://127.0.0.1:{free_port()}",
        worker_command=SLEEPER,
    )


@pytest.fixture
def http(stack: SpawnerFixture) -> Iterator[httpx.Client]:
    with (
        serve(create_app(stack.settings), probe="/healthz") as url,
        httpx.Client(base_url=url, headers=stack.headers("alice"), timeout=10) as client,
    ):
        assert client.put("/api/v1/workers/default").status_code == 201
        yield client


def worker_dir(stack: SpawnerFixture) -> Path:
    return stack.settings.data_dir / "workers" / make_user_dir_name("alice") / "default"


def replace_file(path: Path, data: bytes) -> None:
    """Write like the worker does: a new file renamed over the old one."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def check_every_route(http: httpx.Client, case: str) -> dict[str, object]:
    answers = {
        "GET worker": http.get("/api/v1/workers/default"),
        "GET workers": http.get("/api/v1/workers"),
        "PUT environment": http.put(
            "/api/v1/workers/default/environment", json={"requirements": "six==1.16.0"}
        ),
        "GET environment": http.get("/api/v1/workers/default/environment"),
        "PUT worker": http.put("/api/v1/workers/default"),
        "GET log": http.get("/api/v1/workers/default/log"),
    }
    statuses = {route: answer.status_code for route, answer in answers.items()}
    assert statuses == {**dict.fromkeys(answers, 200), "GET log": statuses["GET log"]}, (
        case,
        statuses,
        {route: a.text[:200] for route, a in answers.items() if a.status_code >= 400},
    )
    assert statuses["GET log"] in (200, 404), case

    body = answers["GET worker"].json()
    assert body["state"] in {"starting", "ready"}, (case, body["state"], body["error"])
    assert len(json.dumps(body["info"])) <= MAX_INFO_BYTES, case
    minor = body["info"].get("python_minor")
    assert minor is None or (isinstance(minor, str) and re.fullmatch(MINOR, minor)), case
    assert [w["name"] for w in answers["GET workers"].json()] == ["default"]
    python = answers["PUT environment"].json()["python"]
    assert isinstance(python, str) and re.fullmatch(MINOR, python), (case, python)
    env_id = answers["PUT environment"].json()["env_id"]
    assert answers["GET environment"].json()["env_id"] == env_id
    info: dict[str, object] = body["info"]
    return info


def test_hostile_status_files_never_break_a_route(
    stack: SpawnerFixture, http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="rexec_spawner")
    status = worker_dir(stack) / "status.json"
    replace_file(status, json_bytes(GOOD))
    assert check_every_route(http, "good")["python_minor"] == "3.11"
    for case, data in HOSTILE.items():
        replace_file(status, data)
        info = check_every_route(http, case)
        assert info.get("python_minor") in (None, "3.11"), (case, info.get("python_minor"))

    # Files that are not files: reading them must neither block nor fill memory.
    special = {
        "a FIFO": lambda: os.mkfifo(status),
        "a link": lambda: status.symlink_to("/dev/zero"),
    }
    for case, make in special.items():
        status.unlink()
        make()
        started = time.monotonic()
        check_every_route(http, case)
        assert time.monotonic() - started < 5, f"{case}: the routes waited on the status file"

    # A good report afterwards is read as before.
    status.unlink()
    replace_file(status, json_bytes({**GOOD, "pid": 777}))
    info = check_every_route(http, "good again")
    assert info["pid"] == 777 and info["python_minor"] == "3.11"

    # Each kind of problem was logged, once, without the values.
    warnings = [r.getMessage() for r in caplog.records if "in its status file" in r.getMessage()]
    assert sum("field python_minor" in w for w in warnings) == 1, warnings
    assert sum("is not JSON" in w for w in warnings) == 1, warnings
    assert any("not UTF-8" in w for w in warnings), warnings
    assert any("over the" in w or "bytes" in w for w in warnings), warnings
    assert not any("rm -rf" in w or "3333" in w for w in warnings), warnings


def test_hostile_logs_never_break_the_log_route(stack: SpawnerFixture, http: httpx.Client) -> None:
    log = worker_dir(stack) / "worker.log"
    # 20 MB without a line break: the answer is bounded, and comes quickly.
    replace_file(log, b"x" * 20_000_000 + b"\nlast line")
    tail = http.get("/api/v1/workers/default/log?tail=2")
    assert tail.status_code == 200
    assert tail.text.endswith("last line") and len(tail.text) <= 8 * 1024 * 1024 + 100
    for make in (lambda: os.mkfifo(log), lambda: log.symlink_to("/dev/zero")):
        log.unlink()
        make()
        started = time.monotonic()
        answer = http.get("/api/v1/workers/default/log")
        assert answer.status_code == 503 and "cannot show the worker's log" in answer.text
        assert time.monotonic() - started < 5
        assert http.get("/api/v1/workers/default").status_code == 200
