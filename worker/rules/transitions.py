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
        """Parse a matrix; raises MatrixError naming what is wrong."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise MatrixError(f"{origin}: {exc}") from None
        groups_raw, allow_raw = data.get("groups"), data.get("allow")
        if not isinstance(groups_raw, dict) or not isinstance(allow_raw, dict):
            raise MatrixError(f"{origin}: needs [groups] and [allow] tables")
        groups = {
            normalize(g): {normalize(s) for s in members} for g, members in groups_raw.items()
        }
        allow = {normalize(k): {normalize(t) for t in targets} for k, targets in allow_raw.items()}
        return cls(groups, allow)

    @classmethod
    def load(cls, path: Path | None) -> TransitionMatrix:
        if path is None:
            return cls.from_toml(DEFAULT_MATRIX, origin="default matrix")
        try:
            text = path.read_text()
        except OSError as exc:
            raise MatrixError(
                f"cannot read TRANSITION_MATRIX_FILE {path}: {exc.strerror}"
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
