"""TransitionMatrix: which presence may follow which (default matrix and TOML overrides)."""

from __future__ import annotations

import pytest

from worker.catalog import Definition, normalize
from worker.rules.transitions import DEFAULT_MATRIX, MatrixError, TransitionMatrix


def system(name: str) -> Definition:
    """A primary definition as the catalog builds it (system name normalised)."""
    return Definition(f"id-{name}", name, normalize(name), True, False)


def secondary(label: str, of: str) -> Definition:
    return Definition(f"id-{label}", label, normalize(of), False, False)


SYSTEMS = [
    "Available", "On Queue", "Idle", "Busy", "Meeting", "Training", "Break", "Meal", "Away",
    "Offline",
]  # fmt: skip
COFFEE = secondary("Coffee", "Break")
LUNCH = secondary("Lunch", "Meal")
TEAM_MEETING = secondary("Team Meeting", "Meeting")


@pytest.fixture
def default() -> TransitionMatrix:
    return TransitionMatrix.load(None)


@pytest.mark.parametrize("target", ["Break", "Meal", "Away"])
def test_an_offline_agent_may_not_start_a_break(default, target):
    verdict = default.check(system("Offline"), system(target))

    assert not verdict.allowed
    assert verdict.reason == f"Offline → {target} is not allowed by the transition matrix"


@pytest.mark.parametrize("target", ["Available", "On Queue", "Idle", "Busy", "Meeting"])
def test_an_offline_agent_may_start_working(default, target):
    assert default.check(system("Offline"), system(target)).allowed


@pytest.mark.parametrize("source", SYSTEMS)
def test_every_presence_may_go_offline(default, source):
    assert default.check(system(source), system("Offline")).allowed
    assert default.check(secondary("Whatever", source), system("Offline")).allowed


@pytest.mark.parametrize("source", ["Available", "On Queue", "Busy", "Meeting", "Break", "Meal"])
def test_working_and_breaking_agents_may_move_between_every_group(default, source):
    for target in SYSTEMS:
        assert default.check(system(source), system(target)).allowed


def test_secondary_presences_follow_their_system_presence(default):
    assert not default.check(system("Offline"), COFFEE).allowed  # Coffee is a Break
    assert not default.check(system("Offline"), LUNCH).allowed  # Lunch is a Meal
    assert default.check(system("Offline"), TEAM_MEETING).allowed  # Team Meeting is a Meeting
    assert default.check(COFFEE, system("On Queue")).allowed
    assert default.check(system("On Queue"), COFFEE).allowed


def test_the_default_matrix_text_is_the_default(default):
    parsed = TransitionMatrix.from_toml(DEFAULT_MATRIX)

    assert parsed.groups == default.groups
    assert parsed.allow == default.allow


OVERRIDE = """
[groups]
working = ["On Queue", "Available", "Idle", "Busy", "Meeting", "Training"]
pause = ["Break", "Meal", "Away"]
offline = ["Offline"]

[allow]
working = ["working", "pause", "offline"]
pause = ["working", "pause", "offline"]
offline = ["working", "offline"]
# An org label is more specific than its system presence and its group:
Coffee = ["On Queue", "Offline"]
"""


def test_an_override_file_may_refine_one_org_label(tmp_path):
    path = tmp_path / "matrix.toml"
    path.write_text(OVERRIDE)
    matrix = TransitionMatrix.load(path)

    assert matrix.check(system("Break"), system("Busy")).allowed
    assert not matrix.check(COFFEE, system("Busy")).allowed, "the Coffee rule wins"
    assert matrix.check(COFFEE, system("ON_QUEUE")).allowed
    assert matrix.check(COFFEE, system("Offline")).allowed
    assert not matrix.check(system("Offline"), COFFEE).allowed


def test_a_presence_that_no_rule_covers_may_not_be_left(tmp_path):
    path = tmp_path / "matrix.toml"
    path.write_text('[groups]\nworking = ["Available"]\n[allow]\nworking = ["working"]\n')
    matrix = TransitionMatrix.load(path)

    verdict = matrix.check(system("Offline"), system("Available"))

    assert not verdict.allowed
    assert verdict.reason == "no rule allows leaving Offline"


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("[groups\nworking = [", "matrix.toml: "),
        ('[groups]\nworking = ["Available"]\n', "allow: Field required"),
        ('groups = "Available"\n[allow]\n', "groups: Input should be a valid dictionary"),
        ('[groups]\nworking = ["Avialable"]\n[allow]\n', "'Avialable' is not a system presence"),
        ("[groups]\n[allow]\nworking = [1]\n", "allow.working.0: Input should be a valid string"),
        (
            '[groups]\n[allow]\nworking = "Available"\n',
            "allow.working: Input should be a valid list",
        ),
        ("[groups]\n[allow]\n[extra]\n", "extra: Extra inputs are not permitted"),
    ],
)
def test_a_malformed_file_is_a_matrix_error_naming_the_file(tmp_path, text, complaint):
    path = tmp_path / "matrix.toml"
    path.write_text(text)

    with pytest.raises(MatrixError) as caught:
        TransitionMatrix.load(path)

    assert str(path) in str(caught.value)
    assert complaint in str(caught.value)


def test_a_missing_file_is_a_matrix_error_naming_the_file(tmp_path):
    path = tmp_path / "absent.toml"

    with pytest.raises(MatrixError) as caught:
        TransitionMatrix.load(path)

    assert str(path) in str(caught.value)
    assert "TRANSITION_MATRIX_FILE" in str(caught.value)
