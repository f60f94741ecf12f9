"""What a constructed Beam pipeline's steps depend on, read from its graph without running it."""

from __future__ import annotations

from typing import Any

import apache_beam as beam


def _step(p: beam.Pipeline, label: str) -> Any:
    """The applied transform whose full label ends with ``label`` (exactly one)."""
    found: list[Any] = []

    class Find(beam.pipeline.PipelineVisitor):
        def visit_transform(self, node: Any) -> None:
            if node.full_label.split("/")[-1] == label or node.full_label == label:
                found.append(node)

        def enter_composite_transform(self, node: Any) -> None:
            self.visit_transform(node)

    p.visit(Find())
    assert len(found) == 1, (label, [n.full_label for n in found])
    return found[0]


def upstream(p: beam.Pipeline, label: str) -> set[str]:
    """Full labels of every step that step ``label`` waits for: its inputs and side inputs,
    their producers' inputs and side inputs, and so on."""
    seen: set[str] = set()
    todo = [_step(p, label)]
    while todo:
        node = todo.pop()
        pvalues = [*node.inputs, *(s.pvalue for s in node.side_inputs)]
        for pvalue in pvalues:
            producer = pvalue.producer
            if producer is not None and producer.full_label not in seen:
                seen.add(producer.full_label)
                todo.append(producer)
    return seen
