"""A simulated rater, and the whole evaluation loop without a person (tests, ``vsearch demo``).

The simulated rater answers from the generated catalog's ground truth for the task's day: a
result from the query photo's own listing is *relevant*, one from the same category is *partly*,
anything else is *not*. ``noise`` replaces that share of answers with a random grade (seeded), so
two simulated raters disagree a little and the agreement statistics have something to measure.

Simulated ratings are labelled everywhere: the rater's name starts with ``simulated-``, every
rating file says ``"simulated": true``, the report and its page say so, and the gate refuses them
unless told otherwise (``--allow-simulated-ratings``). They measure the pipeline, not quality.
The prefix is reserved: a person cannot rate under it (``ratings.check_person``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core import paths, snapshot
from core.settings import doc
from vsearch.evaluation.ratings import SIMULATED_PREFIX, RatingStore, is_simulated_name
from vsearch.evaluation.task import TASK, read_task


@dataclass(frozen=True)
class SimulateSettings:
    task: str = field(metadata=TASK)
    rater: str = field(  # stored as "simulated-<rater>"
        default="ground-truth", metadata=doc("simulated rater's name (stored as simulated-NAME)")
    )
    noise: float = field(  # 0: exact ground truth
        default=0.0, metadata=doc("share of answers replaced by a random grade")
    )
    seed: int = field(default=0, metadata=doc("seed of the noise"))


def truth_grade(query_listing: str, query_category: str, listing: str, category: str | None) -> int:
    if listing == query_listing:
        return 2
    return 1 if category is not None and category == query_category else 0


def rate_all(task_uri: str, rater: str = "ground-truth", noise: float = 0.0, seed: int = 0) -> int:
    """Rate every result of the task; returns the number of ratings written."""
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"--noise must be in [0, 1], got {noise}")
    task = read_task(task_uri)
    snap = snapshot.read_snapshot(task.catalog, paths.parse_date(task.date))
    category = {lst.listing_id: lst.category for lst in snap.listings}
    name = rater if is_simulated_name(rater) else SIMULATED_PREFIX + rater
    store = RatingStore(task_uri)
    rng = np.random.default_rng(seed)
    n = 0
    for q in task.queries:
        for r in task.results_of(q):
            grade = truth_grade(q.listing_id, q.category, r.listing_id, category.get(r.listing_id))
            if rng.random() < noise:
                grade = int(rng.integers(0, 3))
            store.put(name, q.query_id, r.listing_id, grade, simulated=True)
            n += 1
    return n


def simulate_loop(
    workdir: str,
    catalog: str,
    date: str,
    *,
    model: str | None = None,
    against: str | None = None,
    queries: int = 30,
    k: int = 10,
    seed: int = 0,
    raters: int = 2,
    noise: float = 0.1,
) -> dict[str, str]:
    """Sample a task, rate it with ``raters`` simulated raters, write the report.

    Returns ``{"task", "report_json", "report_html"}`` URIs. For the demo and tests: shows the
    whole human-evaluation loop with no person in it (every output says it was simulated).
    """
    from vsearch.evaluation import report, sample

    task_uri = sample.run(
        sample.SampleSettings(workdir, date, catalog, model, against, queries, k, seed)
    )
    for i in range(raters):
        rate_all(task_uri, f"ground-truth-{i + 1}", noise=noise if i else 0.0, seed=seed + i)
    json_uri, html_uri = report.run(report.ReportSettings(task_uri, seed=seed))
    return {"task": task_uri, "report_json": json_uri, "report_html": html_uri}


def run(s: SimulateSettings) -> int:
    return rate_all(s.task, s.rater, s.noise, s.seed)


def cli_run(s: SimulateSettings) -> int:
    n = run(s)
    name = SIMULATED_PREFIX + s.rater.removeprefix(SIMULATED_PREFIX)
    print(f"[eval-simulate] SIMULATED rater {name}: {n} ratings")
    return n
