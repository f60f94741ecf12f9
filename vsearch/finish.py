"""``vsearch finish STAGE``: finish a day whose Beam job was launched as a Flex Template.

A template launch only describes the job (``--template_location``); the job then runs on
Dataflow, and writes its outputs and, last, its counts into the run's folder
(``pipelines/job_record.py``). This command does what the stage's own process does after a
normal run: the run summary, the completion marker and, for embed, the partition commit. It
refuses (one line, exit 1) while the job's counts are missing, so a failed or cancelled job never
finishes a day, and a day finished before is left as it is. It loads neither Beam nor TensorFlow.

embed's jobs are each for one model version, and this finishes one of them: ``--model V`` the
job launched with ``vsearch embed --model V`` (a candidate's), by default the published model's,
production's day, which the DAG's finish task finishes. A job launched for another model is
never finished or touched by it; a refusal names the models whose jobs were launched that day.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from core.settings import DATE, WORKDIR, doc
from vsearch import registry, stages


@dataclass(frozen=True)
class FinishSettings:
    stage: str = field(
        metadata=doc(
            "the stage whose day to finish: preprocess or embed",
            positional=True,
            choices=registry.FINISHED_LATER,
        )
    )
    workdir: str = field(metadata=WORKDIR)
    date: dt.date = field(metadata=DATE)
    model: str | None = field(  # None: production's job, the published model's
        default=None,
        metadata=doc(
            "embed: finish the job launched for model VERSION (vsearch embed --model VERSION); "
            "default: the published model's, production's day. One model's job per call: other "
            "models' jobs of the day are left as they are",
            metavar="VERSION",
        ),
    )


def run(settings: FinishSettings) -> Any:
    """The stage's ``finish(workdir, date)`` (the registry names it), given ``model_version`` for
    embed; returns its result."""
    finish = stages.load(registry.STAGES[settings.stage].finish)
    if settings.stage == "embed":
        return finish(settings.workdir, settings.date, model_version=settings.model)
    if settings.model is not None:
        raise ValueError(f"--model: only embed's jobs are per model, not {settings.stage}'s")
    return finish(settings.workdir, settings.date)
