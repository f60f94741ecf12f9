"""``vsearch gate``: the gate stage. Promotes a candidate model (flips models/PUBLISHED) only when it
is better, measured now on fixed eval data (models/gate.py) and judged by pipelines/gate_rules.py.

Rules. A first model (nothing published) must beat the best of two baselines measured in the
same run on the same images (a colour histogram, and the untrained network of its own
architecture) on review->listing recall@10 and same-category precision@10, by ``baseline_margin``
or two standard errors of the baseline, whichever is larger: no absolute floor tuned to one
catalog. A later model must beat the published one's recall@10 by ``margin`` with no other metric
dropping by more than ``tolerance``. ``--floor`` adds a check to either rule. The metrics are the
shopper's: held-out review photos against the whole catalog (``models/retrieval_metrics.py``).
With ``require_human_eval`` it must also have a rated blind side-by-side it does not lose
significantly (:func:`human_eval_verdict`). A first model's reasons give one line per capability
(``CAPABILITIES``: buyer photo -> its listing, listing -> same-category listings): fine, or at which
baseline's level; the last reason says what to do next about the capability that failed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from core import paths, pointers, runs, storage
from core.settings import WORKDIR, doc
from models.capabilities import SELECTION_METRIC
from pipelines.gate_rules import decide, human_eval_verdict

# No absolute floors by default: a floor tuned to one catalog refuses good models on another
# (a user's --floor adds a check, it replaces nothing).
DEFAULT_FLOORS: tuple[tuple[str, float], ...] = ()


def parse_floor(text: str) -> tuple[str, float]:
    """``metric=value`` -> (metric, value)."""
    name, _, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"expected metric=value, got {text!r}") from None
    if not name.strip() or number != number or number in (float("inf"), float("-inf")):
        raise ValueError(f"expected metric=value with a finite value, got {text!r}")
    return name.strip(), number


@dataclass(frozen=True)
class GateSettings:
    workdir: str = field(metadata=WORKDIR)
    # Its date is the candidate's training date (read from its config.json).
    candidate: str = field(metadata=doc("model VERSION under WORKDIR/models/ to measure"))
    # 0.0: an equally good candidate is promoted (it was trained on fresher data).
    margin: float = field(
        default=0.0, metadata=doc(f"{SELECTION_METRIC} gain over the published model required")
    )
    # Metrics are measured on a few hundred images: a 2-point wobble is noise, not a regression.
    tolerance: float = field(
        default=0.02, metadata=doc("largest drop of any other metric that still promotes")
    )
    # A first model must beat the best same-run baseline (an untrained network of its own
    # architecture, a colour histogram) by this much on each of BASELINE_METRICS, or by two
    # binomial standard errors of the baseline when the eval set is small (models/baselines.py).
    baseline_margin: float = field(
        default=0.05, metadata=doc("gain a first model needs over the best same-run baseline")
    )
    beat_baselines: bool = field(
        default=True,
        metadata=doc("judge a first model against the same-run baselines (off: floors only)"),
    )
    floors: tuple[tuple[str, float], ...] = field(
        default=DEFAULT_FLOORS,
        metadata=doc(
            "metric=value every candidate must also reach, repeatable (adds to the other rules)",
            flag="floor",
            parse=parse_floor,
            repeat=True,
        ),
    )
    batch_size: int = field(default=128, metadata=doc("images per serving call"))
    # Off by default: a human verdict needs people (or a demo's simulated rater) in the loop.
    # On: refuse unless a blind side-by-side against the published model (or, for a first model,
    # any rating of it) exists under WORKDIR/eval/ and the candidate does not lose it significantly.
    require_human_eval: bool = field(
        default=False,
        metadata=doc(
            "also require a rated blind side-by-side (vsearch eval-report) that the candidate "
            "does not lose significantly"
        ),
    )
    human_eval_alpha: float = field(
        default=0.05, metadata=doc("sign-test level for 'loses the side-by-side significantly'")
    )
    # Simulated ratings show the loop (tests, the demo); they are no verdict on a real model.
    allow_simulated_ratings: bool = field(
        default=False, metadata=doc("accept simulated ratings as the human verdict (demo only)")
    )


@dataclass(frozen=True)
class GateDecision:
    promoted: bool  # a promotion means the next embed re-embeds everything (--full)
    candidate: str
    published: str | None  # the version PUBLISHED held when the gate ran
    reasons: tuple[str, ...]
    candidate_metrics: dict[str, float] = field(default_factory=dict)
    published_metrics: dict[str, float] = field(default_factory=dict)
    eval_date: str = ""
    # A first model's same-run baselines, measured on the same images: name -> metrics.
    baseline_metrics: dict[str, dict[str, float]] = field(default_factory=dict)


def run(settings: GateSettings) -> GateDecision:
    """Measure the candidate (and the published model), decide, flip PUBLISHED if promoted, and
    record the decision (``models/VERSION/gate.json`` and the run summary)."""
    from models.gate import measure_models  # TensorFlow: only when the stage runs

    with runs.stopwatch() as clock:
        pointer_uri = paths.published_model_pointer(settings.workdir)
        pointer = pointers.read_pointer(pointer_uri)
        already = pointer.value == settings.candidate
        m = measure_models(
            settings.workdir,
            settings.candidate,
            pointer.value if pointer.value and not already else None,
            settings.batch_size,
            baselines=not pointer.value and settings.beat_baselines,
        )
        if already:
            promoted, reasons = False, ["candidate is already the published model"]
        else:
            queries = int(m.candidate.get("eval_reviews", 0))
            promoted, reasons = decide(m.candidate, m.published, settings, m.baselines, queries)
            if settings.require_human_eval:
                human_ok, human = human_eval_verdict(
                    settings.workdir, settings.candidate, pointer.value, settings
                )
                promoted, reasons = promoted and human_ok, [*reasons, *human]
        if promoted:  # PointerConflict if another gate raced this one
            pointers.compare_and_swap(pointer_uri, settings.candidate, pointer)
    decision = GateDecision(
        promoted,
        settings.candidate,
        pointer.value,
        tuple(reasons),
        m.candidate,
        m.published or {},
        m.date,
        m.baselines,
    )
    storage.write_text(
        storage.join(paths.model_dir(settings.workdir, settings.candidate), "gate.json"),
        json.dumps(asdict(decision), indent=2, sort_keys=True) + "\n",
    )
    # Written under the candidate's date: the day whose train produced it.
    runs.complete(
        settings.workdir,
        runs.RunSummary(
            "gate", m.date, read=1, ok=1, dead_lettered=0, wall_s=clock["s"], extra=asdict(decision)
        ),
    )
    verdict = "PROMOTED" if decision.promoted else "NOT promoted"
    print(f"[gate] {settings.candidate}: {verdict} (published was {pointer.value})")
    for reason in reasons:
        print(f"  - {reason}")
    return decision
