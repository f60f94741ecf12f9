"""``vsearch upgrade-embeddings --workdir W``: rewrite partitions of earlier versions in place.

Earlier versions kept ``dt`` as a column inside the embedding files; pandas, DuckDB and BigQuery
refuse such a folder (the hive key is also a file column). See core/legacy_partitions.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.settings import WORKDIR, doc


@dataclass(frozen=True)
class UpgradeSettings:
    workdir: str = field(metadata=WORKDIR)
    dry_run: bool = field(
        default=False, metadata=doc("list the partitions that need a rewrite, write nothing")
    )


def run(settings: UpgradeSettings) -> None:
    from core.legacy_partitions import embedding_partitions, upgrade_partition

    found = embedding_partitions(settings.workdir)
    if not found:
        print(f"no embedding partitions under {settings.workdir}/embeddings: nothing to do")
        return
    states: dict[str, int] = {}
    for version, date in found:
        r = upgrade_partition(settings.workdir, version, date, dry_run=settings.dry_run)
        states[r.state] = states.get(r.state, 0) + 1
        print(f"{r.partition}: {r.state} ({r.files} files, {r.rows} rows)", flush=True)
    print(
        f"{len(found)} partitions: "
        + ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
        + (" (dry run: nothing written)" if settings.dry_run else "")
    )
