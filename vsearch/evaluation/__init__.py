"""Human evaluation: sample query photos, rate their results in a browser, report, gate on it.

``sample`` (eval-sample) -> ``task`` (the task file) -> ``server`` + ``pages`` (rate) ->
``ratings`` (one file per judgement) -> ``report`` + ``report_html`` + ``stats`` (eval-report);
``simulate`` is a rater from catalog ground truth; ``retrieve`` is the only module that loads a model.
"""
