"""``vsearch``: a thin map from stage names to the library functions that run them.

Each stage module owns its flags (``main(argv)`` parses app flags with ``parse_known_args`` and
hands every unknown flag to Beam as a pipeline option), exactly as Beam's own examples do. Stage
modules are imported only when their command runs, so ``vsearch --help`` is instant.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from vsearch.app import quiet

# name -> (module with a `main(argv) -> int`, one-line help). Order = pipeline order.
COMMANDS: dict[str, tuple[str, str]] = {
    "generate-catalog": (
        "vsearch.synthetic.generate",
        "write a synthetic marketplace catalog (K daily snapshots) for demos, tests, benchmarks",
    ),
    "check-catalog": (
        "pipelines.check_catalog",
        "Beam: validate a day's snapshot and read every image safely; dead-letter the bad ones",
    ),
    "preprocess": (
        "pipelines.preprocess",
        "Beam + TF Transform: decode, normalise, build label vocabularies, split train/eval",
    ),
    "train": (
        "models.train",
        "train the multitask embedding model and export a raw-bytes SavedModel",
    ),
    "gate": (
        "models.gate",
        "promote the candidate model (flip models/PUBLISHED) if it is good enough",
    ),
    "embed": (
        "pipelines.embed",
        "Beam RunInference: embed new or changed images, write Parquet (incremental by default)",
    ),
    "build-index": (
        "pipelines.build_index",
        "Beam + faiss: train PCA + index once, add per shard, validate recall, write a manifest",
    ),
    "publish": ("index.publish", "flip indexes/CURRENT to a validated manifest (compare-and-swap)"),
    "query": ("vsearch.app.query", "search by photo: top-k listings for an image file"),
    "backfill": (
        "vsearch.app.backfill",
        "run the stages for every date in a range, resuming after failure",
    ),
    "demo": (
        "vsearch.app.demo",
        "the whole pipeline on a generated catalog, locally, and a results page",
    ),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [
        "usage: vsearch COMMAND [flags] [--verbose]   (vsearch COMMAND --help for its flags)",
        "",
        "Search by photo for marketplaces: the daily batch pipeline.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += [
        "",
        "Beam stages accept any Beam pipeline option after their own flags, e.g.",
        "  vsearch embed ... --runner DataflowRunner --project P --region R --temp_location gs://...",
        "--verbose keeps TensorFlow's and absl's start-up logs (off by default).",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args, verbose = quiet.configure(list(sys.argv[1:] if argv is None else argv))
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"vsearch: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    with quiet.native_stderr_muted(enabled=not verbose):
        module = importlib.import_module(COMMANDS[name][0])
    try:
        code: int = module.main(rest)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        # Bad input gets one clear line, not a traceback from deep inside a library.
        print(f"vsearch {name}: error: {e}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
