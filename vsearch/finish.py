"""``vsearch finish STAGE``: finish a day whose Beam job was launched as a Flex Template.

A template launch only describes the job (``--template_location``); the job then runs on
Dataflow, and writes its outputs and, last, its counts into the run's folder
(``pipelines/job_record.py``). This command does what the stage's own process does after a
normal run: the run summary, the completion marker and, for embed, the partition commit. It
refuses (one line, exit 1) while the job's counts are missing, so a failed or cancelled job never
finishes a day, and a day finished before is left as it is. It loads neither Beam nor TensorFlow.
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
            "the stage whose day to finish", positional=True, choices=registry.FINISHED_LATER
        )
    )
    workdir: str = field(metadata=WORKDIR)
    date: dt.date = field(metadata=DATE)


def run(settings: FinishSettings) -> Any:
    """The stage's ``finish(workdir, date)`` (the registry names it); returns its result."""
    finish = stages.load(registry.STAGES[settings.stage].finish)
    return finish(settings.workdir, settings.date)
