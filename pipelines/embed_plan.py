"""The embed stage's skip plan: what the change detection reads to know which photos are unchanged.

A run of day D skips only photos known from partitions dt < D, so re-running a day gives the same
rows. The cheap way is the newest state snapshot alone (``core/embedstate.py``), valid while the
embedding partitions it was made on are exactly today's earlier partitions; otherwise (a re-run
or deleted earlier partition, no snapshot yet) the state is checked against every earlier
partition's keys. ``--full`` skips nothing. ``SkipPlan.how`` says which way a run went
(``skip_check`` in the run summary).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import NamedTuple

from core import embedstate, partitions


class SkipPlan(NamedTuple):
    """What the change detection reads to know which photos are unchanged."""

    key_files: list[str]  # earlier partitions' files, for their keys
    state_files: list[str]
    checked: bool  # state_files are one snapshot on unchanged partitions: no key file needed
    basis: dict[str, str]  # the earlier partitions (day -> commit id), for today's snapshot
    how: str  # for the run summary

    @property
    def files(self) -> list[str]:
        """Every earlier file the job reads (``embed_checks.check_readable`` opens them first)."""
        return [*self.key_files, *self.state_files]


def plan_skip(
    workdir: str,
    version: str,
    date: dt.date,
    earlier: Mapping[dt.date, partitions.Committed],
    full: bool = False,
) -> SkipPlan:
    """The newest state snapshot alone when the partitions it was made on are exactly today's
    ``earlier`` partitions (``core/embedstate.py``); else the state checked against
    every earlier partition's keys; nothing with ``full``."""
    basis = {d.isoformat(): c.commit for d, c in earlier.items()}
    if full:
        return SkipPlan([], [], False, basis, "none (--full)")
    snap = embedstate.latest_snapshot(workdir, version, date)
    if snap is not None and snap.basis == basis:
        return SkipPlan([], snap.files, True, basis, f"state snapshot of {snap.day}")
    if snap is None:
        why = "no state snapshot"
    else:
        changed = sorted({d for d, _ in set(snap.basis.items()) ^ set(basis.items())})
        why = f"partitions changed since the state of {snap.day}: {', '.join(changed)}"
    key_files = [u for d in sorted(earlier, reverse=True) for u in earlier[d].files]
    # A snapshot still serves, checked against the keys; older snapshots add only photos that
    # left the catalog since, so they are not read (state from before snapshots is: every day).
    if snap is not None:
        state_files = snap.files
    else:
        state_files = embedstate.files_before(workdir, version, date)
    return SkipPlan(key_files, state_files, False, basis, f"every earlier partition ({why})")
