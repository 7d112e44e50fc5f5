"""The state-transition matrix: which presence may follow which.

Presences are grouped (secondary presences belong to their system presence's group); the matrix
allows group → group moves and may name single presences (system names or org labels) to refine
a group. The default generalises available ↔ busy ↔ break ↔ offline to the ten system presences:
everything may go offline, and from offline an agent may only start working (available or busy),
not start a break.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

from producer.schema import error_location
from worker.catalog import Definition, normalize

DEFAULT_MATRIX = """
# Groups of system presences (any spelling: "On Queue", "OnQueue", "ON_QUEUE").
[groups]
available = ["Available", "On Queue", "Idle"]
busy = ["Busy", "Meeting", "Training"]
break = ["Break", "Meal", "Away"]
offline = ["Offline"]

# from = [allowed targets]; keys and targets are group names, system presences or org labels.
# The most specific key wins: an org label, then its system presence, then its group.
[allow]
available = ["available", "busy", "break", "offline"]
busy = ["available", "busy", "break", "offline"]
break = ["available", "busy", "break", "offline"]
offline = ["available", "busy", "offline"]
"""


# The platform's ten system presences, normalised (every definition belongs to one of them).
SYSTEM_PRESENCES = (
    "available",
    "away",
    "busy",
    "offline",
    "idle",
    "onqueue",
    "meal",
    "training",
    "meeting",
    "break",
)


class MatrixError(ValueError):
    """The transition matrix file is malformed."""


Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]


class _MatrixFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    groups: dict[Name, list[Name]]
    allow: dict[Name, list[Name]]


def _first_error(exc: ValidationError) -> str:
    """One line: where the first problem is and what it is."""
    error = exc.errors()[0]
    where = error_location(error["loc"], "file")
    return f"{where}: {error['msg']}" + (
        f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    )


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    reason: str


class TransitionMatrix:
    def __init__(self, groups: dict[str, set[str]], allow: dict[str, set[str]]) -> None:
        self.groups = groups
        self.allow = allow
        self.group_of = {system: group for group, members in groups.items() for system in members}

    @classmethod
    def from_toml(cls, text: str, *, origin: str = "transition matrix") -> TransitionMatrix:
        """Parse a matrix; raises MatrixError (one line) naming what is wrong.

        The file has exactly two tables: ``[groups]`` (group name → system presences) and
        ``[allow]`` (group, system presence or org label → allowed targets, the same kinds).
        Group members must be system presences; names in ``[allow]`` that are neither a group
        nor a system presence are org labels, matched at run time.
        """
        try:
            data = _MatrixFile.model_validate(tomllib.loads(text))
        except tomllib.TOMLDecodeError as exc:
            raise MatrixError(f"{origin}: {exc}") from None
        except ValidationError as exc:
            raise MatrixError(f"{origin}: {_first_error(exc)}") from None
        groups: dict[str, set[str]] = {}
        for name, members in data.groups.items():
            group = normalize(name)
            unknown = [m for m in members if normalize(m) not in SYSTEM_PRESENCES]
            if unknown:
                raise MatrixError(
                    f"{origin}: group {name!r}: {', '.join(map(repr, unknown))} "
                    f"is not a system presence (use one of {', '.join(SYSTEM_PRESENCES)})"
                )
            groups[group] = {normalize(m) for m in members}
        allow = {normalize(k): {normalize(t) for t in targets} for k, targets in data.allow.items()}
        return cls(groups, allow)

    @classmethod
    def load(cls, path: Path | None) -> TransitionMatrix:
        if path is None:
            return cls.from_toml(DEFAULT_MATRIX, origin="default matrix")
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise MatrixError(
                f"cannot read TRANSITION_MATRIX_FILE {path}: {exc.strerror}"
            ) from None
        except UnicodeDecodeError as exc:
            raise MatrixError(
                f"TRANSITION_MATRIX_FILE {path} is not UTF-8 text: {exc.reason}"
            ) from None
        return cls.from_toml(text, origin=str(path))

    def _names(self, definition: Definition) -> list[str]:
        """Most specific first: label (secondary only), system presence, group."""
        names = [] if definition.primary else [normalize(definition.label)]
        names.append(definition.system)
        group = self.group_of.get(definition.system)
        if group is not None:
            names.append(group)
        return names

    def check(self, current: Definition, target: Definition) -> Verdict:
        source_names = self._names(current)
        key = next((n for n in source_names if n in self.allow), None)
        if key is None:
            return Verdict(False, f"no rule allows leaving {current.label}")
        targets = self.allow[key]
        if any(name in targets for name in self._names(target)):
            return Verdict(True, "allowed")
        return Verdict(
            False, f"{current.label} → {target.label} is not allowed by the transition matrix"
        )

    def always_allows(self, target: Definition) -> bool:
        """True when every possible current presence may move to ``target``: a change to it needs
        no read of the agent's current presence for this rule."""
        target_names = self._names(target)
        for system in SYSTEM_PRESENCES:
            group = self.group_of.get(system)
            if system not in self.allow and (group is None or group not in self.allow):
                return False
        return all(any(name in targets for name in target_names) for targets in self.allow.values())
