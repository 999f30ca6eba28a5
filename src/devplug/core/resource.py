"""One resource's entries as the inventory keeps them: by ID, and in ID order to list them.

The order is kept while only entries' fields change (a health flip patches one slot of
``listed``: with 1,000 devices, no loop and no copy) and rebuilt when next asked after IDs
came or went. ``snapshot`` is an immutable copy for readers that keep what they read
(Allocate, published views), made only when one asks. Pure state, no I/O.
"""

from __future__ import annotations

from typing import Optional

import attrs

from .entries import Entry


@attrs.define(slots=True)
class Resource:
    entries: dict[str, Entry] = attrs.field(factory=dict)
    physical: dict[str, tuple[str, ...]] = attrs.field(factory=dict)  # base ID -> its IDs
    version: int = 0
    snapshot: Optional[tuple[Entry, ...]] = None
    order: Optional[list[str]] = None  # sorted IDs; kept while only health/fields change
    # While ``order`` holds: the entries in that order, and each ID's position.
    listed: Optional[list[Entry]] = None
    position: Optional[dict[str, int]] = None

    def replace(self, entry: Entry) -> None:
        """An existing ID's entry changes (the ID order does not)."""
        self.entries[entry.id] = entry
        if self.listed is not None and self.position is not None:
            self.listed[self.position[entry.id]] = entry

    def reorder(self) -> None:
        """IDs came or went: the order is rebuilt when next asked."""
        self.order = self.listed = self.position = None

    def in_order(self) -> list[Entry]:
        """The entries sorted by ID: the list itself, which later changes patch in place."""
        if self.listed is None:
            self.order = sorted(self.entries)
            self.position = {k: n for n, k in enumerate(self.order)}
            entries = self.entries
            self.listed = [entries[k] for k in self.order]
        return self.listed
