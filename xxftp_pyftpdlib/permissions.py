"""The permission words of a tree and what each FTP action needs.

Rules that live here:

- A permission is a comma list of the words ``read``, ``write`` and
  ``modify`` (``none`` names the empty set). The default is all three.
- ``read`` allows downloads; ``write`` allows creating a new file;
  ``modify`` allows changing what exists (delete, make/remove folders,
  rename, chmod, set times). Overwriting or appending to an existing file
  changes it *and* writes, so it needs both ``write`` and ``modify``.
- Listing a folder and entering it are always allowed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

WORDS = ("read", "write", "modify")


class Action(enum.Enum):
    """What a command does to a path, as far as permissions care."""

    READ = ("read",)
    CREATE = ("write",)
    OVERWRITE = ("write", "modify")
    CHANGE = ("modify",)

    @property
    def needs(self) -> tuple[str, ...]:
        return self.value


@dataclass(frozen=True)
class Permission:
    """An immutable set of permission words."""

    words: frozenset[str]

    @classmethod
    def parse(cls, text: str) -> tuple["Permission", list[str]]:
        """Parse ``read,write`` into a Permission and the unknown words.

        Unknown words are returned (for the caller to report) and left
        out, so a typo can only ever take a right away, never grant one.
        """
        known: set[str] = set()
        unknown: list[str] = []
        for raw in text.split(","):
            word = raw.strip().lower()
            if not word or word == "none":
                continue
            if word in WORDS:
                known.add(word)
            else:
                unknown.append(raw.strip())
        return cls(frozenset(known)), unknown

    def allows(self, action: Action) -> bool:
        return all(w in self.words for w in action.needs)

    def missing(self, action: Action) -> list[str]:
        """The words this permission lacks for ``action``, in table order."""
        return [w for w in action.needs if w not in self.words]

    def __str__(self) -> str:
        return ",".join(w for w in WORDS if w in self.words) or "none"


FULL = Permission(frozenset(WORDS))
NONE = Permission(frozenset())
