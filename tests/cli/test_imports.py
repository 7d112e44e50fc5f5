"""``presence import``, run in-process against a real Redis broker and, for the definition
checks, the real emulator over sockets."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import redis
from typer.testing import CliRunner

from bench.pipeline import api_requests
from cli.main import app
from emulator.launcher import EmulatorProcess
from producer.schema import QUEUE
from sandbox.orgs import OrgEntry, secret_env, write_orgs_file
from tests.support.processes import stop
from worker.embedded_redis import _server_binary, reachable
from worker.settings import get_settings

AGENT = "0f3c2a1e-5b6d-4c7e-8f90-a1b2c3d4e5f6"
OTHER = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
NOT_CHECKED = (
    "states and reasons not checked: GENESYS_REGION or GENESYS_API_URL, GENESYS_CLIENT_ID, "
    "GENESYS_CLIENT_SECRET not set (the worker rejects unknown ones when it applies each row)"
)
GENESYS = ("GENESYS_REGION", "GENESYS_API_URL", "GENESYS_CLIENT_ID", "GENESYS_CLIENT_SECRET")


@pytest.fixture
def env(monkeypatch, redis_url, tmp_path):
    """Redis for the broker, no Genesys settings, a wide terminal so lines stay whole."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("COLUMNS", "250")
    for name in GENESYS:
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    broker = redis.Redis.from_url(redis_url)
    yield SimpleNamespace(broker=broker, tmp_path=tmp_path, monkeypatch=monkeypatch)
    broker.close()
    get_settings.cache_clear()


@pytest.fixture
def genesys(env, emulator: EmulatorProcess):
    """``env`` with the Genesys settings of the (reset) session emulator."""
    httpx.post(f"{emulator.base_url}/__emulator/reset").raise_for_status()
    env.monkeypatch.setenv("GENESYS_API_URL", emulator.base_url)
    env.monkeypatch.setenv("GENESYS_CLIENT_ID", emulator.client_id)
    env.monkeypatch.setenv("GENESYS_CLIENT_SECRET", emulator.client_secret)
    get_settings.cache_clear()
    return env


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def csv_file(env, text: str, name: str = "changes.csv") -> Path:
    path = env.tmp_path / name
    path.write_text(text)
    return path


def queued(env, queue: str = QUEUE) -> list[dict]:
    """The payloads waiting on a queue (the default org's unless told), oldest first."""
    messages = [json.loads(raw) for raw in reversed(env.broker.lrange(queue, 0, -1))]
    return [json.loads(base64.b64decode(m["body"]))[0][0] for m in messages]


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("line ")]


def assert_one_line_error(result, code: int) -> str:
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: ")
    return result.stderr.removeprefix("error: ").rstrip("\n")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- rows -----------------------------------------------------------------------------------------
def test_import_enqueues_the_good_rows_and_reports_each_bad_one(env):
    path = csv_file(
        env,
        "user_id,state,reason\n"
        f"{AGENT},Break,Coffee\n"
        "not-a-user,Break,\n"
        f"{OTHER},On Queue,\n"
        f"{AGENT},,\n",
    )

    result = run("import", str(path))

    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0] == NOT_CHECKED
    assert error_lines(result.stdout) == [
        "line 3: user_id: 'not-a-user' is not a Genesys user id (a UUID such as "
        "3ce84f47-4e65-4756-a815-67a2b32e58b8)",
        "line 5: state: empty or missing (required)",
    ]
    assert lines[-1] == "queued 2, invalid 2 of 4 rows"
    assert [(m["user_id"], m["state"], m["source"]) for m in queued(env)] == [
        (AGENT, "Break", "import"),
        (OTHER, "On Queue", "import"),
    ]


def test_import_of_only_good_rows_exits_0(env):
    path = csv_file(env, f"user_id,state,source\n{AGENT},Meal,wfm\n")

    result = run("import", str(path))

    assert result.exit_code == 0, result.output
    assert [m["source"] for m in queued(env)] == ["wfm"]


def test_comments_and_blank_lines_are_skipped_and_lines_keep_their_numbers(env):
    path = csv_file(
        env,
        "# exported from the roster tool\n"
        "\n"
        "user_id,state\n"
        "\n"
        f"{AGENT},Break\n"
        "# a note between rows\n"
        "\n"
        "nobody,Break\n"
        f"{OTHER},Meal\n",
    )

    result = run("import", str(path))

    assert result.exit_code == 1
    assert [line.split(":")[0] for line in error_lines(result.stdout)] == ["line 8"]
    assert result.stdout.splitlines()[-1] == "queued 2, invalid 1 of 3 rows"
    assert [m["user_id"] for m in queued(env)] == [AGENT, OTHER]


def test_a_later_line_for_the_same_agent_is_requested_later(env):
    path = csv_file(env, f"user_id,state\n{AGENT},Break\n{OTHER},Meal\n{AGENT},On Queue\n")

    result = run("import", str(path))

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == (
        "queued 3 (1 set an agent a later line sets again), invalid 0 of 3 rows"
    )
    sent = queued(env)
    assert [m["state"] for m in sent] == ["Break", "Meal", "On Queue"]
    assert sent[0]["requested_at"] < sent[1]["requested_at"] < sent[2]["requested_at"]


def test_more_than_20_errors_are_counted_not_printed(env):
    path = csv_file(env, "user_id,state\n" + "x,Break\n" * 23)

    result = run("import", str(path))

    assert result.exit_code == 1
    assert len(error_lines(result.stdout)) == 20
    assert "… and 3 more invalid rows" in result.stdout
    assert result.stdout.splitlines()[-1] == "queued 0, invalid 23 of 23 rows"


def test_markup_in_values_is_printed_literally(env):
    path = csv_file(env, "user_id,state\n[bold red]x[/],Break\n")

    result = run("import", str(path), "--dry-run")

    assert result.exit_code == 1
    assert "'[bold red]x[/]' is not a Genesys user id" in result.stdout


# -- files that are no import file: one line, exit 2, nothing queued -------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "changes.csv: no header row (the columns are user_id, state, reason, source, "
         "expected_state, idempotency_key, message, org)"),
        ("# only a comment\n\n", "changes.csv: no header row (the columns are user_id, state, "
         "reason, source, expected_state, idempotency_key, message, org)"),
        ("\nuser_id,state\n\n", "changes.csv: no rows after the header on line 2: nothing to "
         "import"),
        (f"user_id,state,agent_name\n{AGENT},Break,Ann\n", "changes.csv: line 1: unknown "
         "column(s) 'agent_name' (the columns are user_id, state, reason, source, "
         "expected_state, idempotency_key, message, org; user_id, state are required)"),
        (f"agent,presence\n{AGENT},Break\n", "changes.csv: line 1: unknown column(s) 'agent', "
         "'presence'; missing column(s) user_id, state (the columns are user_id, state, reason, "
         "source, expected_state, idempotency_key, message, org; user_id, state are required)"),
    ],
    ids=["empty", "comment-only", "header-only", "unknown-column", "missing-columns"],
)  # fmt: skip
def test_a_file_that_is_no_import_file_exits_2_with_one_line(env, text, expected):
    result = run("import", str(csv_file(env, text)))

    assert assert_one_line_error(result, 2) == expected
    assert result.stdout == ""
    assert env.broker.llen(QUEUE) == 0


def test_a_file_that_is_not_utf8_names_the_file_and_line(env):
    path = env.tmp_path / "changes.csv"
    path.write_bytes(f"user_id,state\n\n{AGENT},Pause café\n".encode("latin-1"))

    result = run("import", str(path))

    assert assert_one_line_error(result, 2) == (
        "changes.csv: line 3 is not UTF-8 text (byte 47 of the line); save the file as UTF-8"
    )
    assert env.broker.llen(QUEUE) == 0


@pytest.mark.parametrize("where", ["missing.csv", "."], ids=["missing", "directory"])
def test_a_path_that_cannot_be_read_is_one_line_and_exit_2(env, where):
    path = env.tmp_path / where

    result = run("import", str(path))

    message = assert_one_line_error(result, 2)
    assert message.startswith(f"cannot read {path}: ")
    assert message.endswith(("No such file or directory", "Is a directory"))


def test_redis_down_is_one_line_without_the_password_and_exit_1(env):
    env.monkeypatch.setenv("REDIS_URL", f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0")
    get_settings.cache_clear()
    path = csv_file(env, f"user_id,state\n{AGENT},Break\n")

    result = run("import", str(path))

    message = assert_one_line_error(result, 1)
    assert message.startswith("Redis at redis://127.0.0.1:")
    assert "(REDIS_URL): " in message
    assert "Connection refused" in message
    assert message.endswith("; queued 0 of 1 valid rows, in file order")
    assert "s3cret-pw" not in result.output


@pytest.fixture
def guarded_redis(tmp_path):
    """A real redis-server that requires the password ``right-pw``; yields its port."""
    port = free_port()
    server = subprocess.Popen(
        [_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path), "--requirepass", "right-pw"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not reachable(f"redis://:right-pw@127.0.0.1:{port}/0", 0.2):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        yield port
    finally:
        stop(server)


def test_a_wrong_redis_password_is_one_line_without_it(env, guarded_redis):
    env.monkeypatch.setenv("REDIS_URL", f"redis://:wrong-pw-123@127.0.0.1:{guarded_redis}/0")
    get_settings.cache_clear()
    path = csv_file(env, f"user_id,state\n{AGENT},Break\n")

    result = run("import", str(path))

    assert assert_one_line_error(result, 1) == (
        f"Redis at redis://127.0.0.1:{guarded_redis}/0 (REDIS_URL): invalid username-password "
        "pair or user is disabled; queued 0 of 1 valid rows, in file order"
    )
    assert "wrong-pw-123" not in result.output


# -- checked against the org's presence definitions (the emulator) --------------------------------
def test_unknown_states_and_reasons_are_rejected_at_import(genesys):
    path = csv_file(
        genesys,
        "user_id,state,reason\n"
        f"{AGENT},Break,Coffee\n"
        f"{OTHER},Vacation,\n"
        f"{AGENT},Break,Nap\n"
        f"{OTHER},Break,Smoke Break\n"
        f"{OTHER},onqueue,\n",
    )

    result = run("import", str(path))

    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("states and reasons checked against ")
    errors = error_lines(result.stdout)
    assert errors[0].startswith("line 3: Unknown state 'Vacation'; use one of: ")
    assert errors[1] == (
        "line 4: Unknown reason 'Nap' for state 'Break'; reasons for Break: Coffee"
    )
    assert errors[2] == "line 5: Presence 'Smoke Break' is deactivated in this org"
    assert lines[-1] == "queued 2, invalid 3 of 5 rows"
    assert [(m["state"], m.get("reason")) for m in queued(genesys)] == [
        ("Break", "Coffee"),
        ("onqueue", None),
    ]


def test_rows_go_to_their_orgs_queue_the_org_column_winning_over_the_option(env):
    path = csv_file(
        env, f"user_id,state,org\n{AGENT},Break,\n{OTHER},Meal,globex\n{AGENT},Away,default\n"
    )

    result = run("import", str(path), "--org", "acme")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == NOT_CHECKED
    assert [(m["state"], m["org"]) for m in queued(env, "presence.acme")] == [("Break", "acme")]
    assert [(m["state"], m["org"]) for m in queued(env, "presence.globex")] == [("Meal", "globex")]
    assert [(m["state"], m.get("org")) for m in queued(env)] == [("Away", None)]


def test_the_same_agent_in_two_orgs_is_two_agents(env):
    path = csv_file(env, f"user_id,state,org\n{AGENT},Break,acme\n{AGENT},Meal,\n")

    result = run("import", str(path), "--no-check")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "queued 2, invalid 0 of 2 rows"


def test_a_bad_org_is_one_line_for_the_option_and_a_row_error_for_a_cell(env):
    path = csv_file(env, f"user_id,state,org\n{AGENT},Break,Acme\n{OTHER},Break,\n")

    bad_option = run("import", str(path), "--org", "ACME")
    bad_cell = run("import", str(path), "--no-check")

    assert bad_option.exit_code == 2
    assert bad_option.stderr.count("\n") == 1
    assert bad_option.stderr.startswith("error: --org: 'ACME' is not an org name (")
    assert bad_cell.exit_code == 1
    assert error_lines(bad_cell.stdout)[0].startswith("line 2: org: 'Acme' is not an org name (")
    assert [m["user_id"] for m in queued(env)] == [OTHER]


def test_rows_of_an_org_configured_nowhere_here_are_left_to_the_worker(genesys):
    path = csv_file(genesys, f"user_id,state,org\n{AGENT},Vacation,\n{OTHER},Vacation,acme\n")

    result = run("import", str(path))

    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("states and reasons checked against ")
    assert lines[0].endswith(
        "; states and reasons of org acme not checked here (ORGS_FILE is not set; the worker "
        "rejects unknown ones when it applies each row)"
    )
    assert error_lines(result.stdout)[0].startswith("line 2: Unknown state 'Vacation'")
    assert [m["org"] for m in queued(genesys, "presence.acme")] == ["acme"]
    assert queued(genesys) == []


@pytest.fixture
def acme(genesys, emulator: EmulatorProcess):
    """``genesys`` plus a second org ``acme`` served by the emulator and named in ORGS_FILE
    (gone at the next test's reset)."""
    org = httpx.post(f"{emulator.base_url}/__emulator/orgs", json={"name": "acme", "users": 5})
    org.raise_for_status()
    body = org.json()
    entry = OrgEntry("acme", emulator.base_url, body["clientIds"][0], body["clientSecret"])
    env = write_orgs_file(genesys.tmp_path / "orgs.toml", [entry])
    for name, value in env.items():
        genesys.monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    return genesys


def acme_requests(emulator: EmulatorProcess) -> int:
    stats = httpx.get(f"{emulator.base_url}/__emulator/stats", params={"org": "acme"}).json()
    return api_requests(stats)[0]


def test_each_orgs_rows_are_checked_against_that_orgs_own_definitions(acme, emulator):
    path = csv_file(
        acme,
        "user_id,state,org\n"
        f"{AGENT},Vacation,\n"
        f"{OTHER},Vacation,acme\n"
        f"{OTHER},Break,acme\n"
        f"{AGENT},Meal,globex\n",
    )

    result = run("import", str(path))

    assert result.exit_code == 1, result.output
    note = result.stdout.splitlines()[0]
    assert note.startswith("states and reasons checked against ")
    assert "; org acme: states and reasons checked against " in note
    assert note.endswith(
        "; states and reasons of org globex not checked here (not in ORGS_FILE; the worker "
        "rejects unknown ones when it applies each row)"
    )
    errors = error_lines(result.stdout)
    assert [e.split(":")[0] for e in errors] == ["line 2", "line 3"]
    assert errors[1].startswith("line 3: Unknown state 'Vacation'")
    assert [m["state"] for m in queued(acme, "presence.acme")] == ["Break"]
    assert [m["state"] for m in queued(acme, "presence.globex")] == ["Meal"]
    assert acme_requests(emulator) >= 1  # acme's own client read acme's definitions


def test_an_org_whose_definitions_cannot_be_read_is_one_line_naming_it(acme, emulator):
    acme.monkeypatch.setenv(secret_env("acme"), "not-the-secret")
    get_settings.cache_clear()
    path = csv_file(acme, f"user_id,state,org\n{OTHER},Break,acme\n")

    result = run("import", str(path))

    message = assert_one_line_error(result, 1)
    assert message.startswith("org acme: cannot read the presence definitions from ")
    assert "not-the-secret" not in result.output
    assert queued(acme, "presence.acme") == []


def test_dry_run_says_what_each_row_would_do_and_queues_nothing(genesys):
    path = csv_file(
        genesys,
        "user_id,state,reason,expected_state,idempotency_key\n"
        f"{AGENT},Break,Coffee,On Queue,k-1\n"
        f"{OTHER},Meal,,,k-1\n"
        f"{AGENT},Holiday,,,\n"
        f"{AGENT},On Queue,,,\n",
    )

    result = run("import", str(path), "--dry-run")

    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[1].startswith(f"line 2: {AGENT} → Coffee (")  # then the definition id
    assert lines[1].endswith(", only if now On Queue; line 5 sets the same agent later and wins")
    assert lines[2].startswith(f"line 3: {OTHER} → Meal (")
    assert lines[2].endswith("; same idempotency key as line 2: applied once")
    assert lines[3].startswith("line 4: Unknown state 'Holiday'; use one of: ")
    assert lines[3].endswith(" → rejected")
    assert lines[4] == f"line 5: {AGENT} → On Queue (e08eaf1b-ee47-4fa9-a231-1200e284798f)"
    assert lines[-1] == (
        "dry run, nothing queued: would queue 3 (1 set an agent a later line sets again), "
        "invalid 1 of 4 rows"
    )
    assert genesys.broker.llen(QUEUE) == 0


def test_dry_run_without_genesys_settings_says_the_presences_are_not_checked(env):
    path = csv_file(env, f"user_id,state\n{AGENT},Holiday\n")

    result = run("import", str(path), "--dry-run")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        NOT_CHECKED,
        f"line 2: {AGENT} → Holiday (not checked)",
        "dry run, nothing queued: would queue 1, invalid 0 of 1 rows",
    ]


def test_an_unreachable_genesys_is_one_line_naming_the_url_and_no_secret(env):
    url = f"http://127.0.0.1:{free_port()}"
    env.monkeypatch.setenv("GENESYS_API_URL", url)
    env.monkeypatch.setenv("GENESYS_CLIENT_ID", "ops-client")
    env.monkeypatch.setenv("GENESYS_CLIENT_SECRET", "very-secret-value-22ch")
    get_settings.cache_clear()
    path = csv_file(env, f"user_id,state\n{AGENT},Break\n")

    result = run("import", str(path))

    assert assert_one_line_error(result, 1) == (
        f"cannot read the presence definitions from {url}: Genesys token request failed: "
        "ConnectError (or import with --no-check)"
    )
    assert "very-secret" not in result.output
    assert env.broker.llen(QUEUE) == 0


def test_redis_down_while_checking_is_one_line_naming_redis_url(genesys):
    genesys.monkeypatch.setenv("REDIS_URL", f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0")
    get_settings.cache_clear()
    path = csv_file(genesys, f"user_id,state\n{AGENT},Break\n")

    result = run("import", str(path))

    message = assert_one_line_error(result, 1)
    assert message.startswith("Redis at redis://127.0.0.1:")
    assert "(REDIS_URL): " in message
    assert "s3cret-pw" not in result.output


def test_no_check_imports_without_asking_genesys(env):
    env.monkeypatch.setenv("GENESYS_API_URL", f"http://127.0.0.1:{free_port()}")
    env.monkeypatch.setenv("GENESYS_CLIENT_ID", "ops-client")
    env.monkeypatch.setenv("GENESYS_CLIENT_SECRET", "x")
    get_settings.cache_clear()
    path = csv_file(env, f"user_id,state\n{AGENT},Holiday\n")

    result = run("import", str(path), "--no-check")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "states and reasons not checked (--no-check)"
    assert [m["state"] for m in queued(env)] == ["Holiday"]


def test_wrong_credentials_are_one_line_naming_the_variables(genesys):
    genesys.monkeypatch.setenv("GENESYS_CLIENT_SECRET", "wrong-secret-value")
    get_settings.cache_clear()
    path = csv_file(genesys, f"user_id,state\n{AGENT},Break\n")

    result = run("import", str(path))

    message = assert_one_line_error(result, 1)
    assert "check GENESYS_CLIENT_ID/SECRET" in message
    assert "wrong-secret-value" not in result.output
