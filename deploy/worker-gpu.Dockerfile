# Worker image for Dataflow jobs on GPU workers (the embed stage with --large-model, build-index's
# faiss training). Dataflow's custom-container convention: start from Beam's SDK image of the
# same Beam and Python versions as the launching environment, add the dependencies, and keep
# /opt/apache/beam/boot as the entrypoint (it starts the SDK worker harness).
#
# The Python set is deploy/requirements-worker-gpu.txt: setup.py's runtime dependencies with
# TensorFlow's CUDA build and faiss-gpu, resolved against constraints.txt by
# `make worker-requirements` (tests/test_deploy.py checks it is current). This package is
# installed into the image too, so jobs using it pass --sdk_container_image and no --setup_file
# or --requirements_file (the sdist's faiss-cpu requirement would pull in a second faiss).
#
# Build and push from the repository root (tag with the commit, so a job names its code):
#   docker build -f deploy/worker-gpu.Dockerfile -t REGION-docker.pkg.dev/PROJECT/REPO/vsearch-worker-gpu:$(git rev-parse --short HEAD) .
#   docker push REGION-docker.pkg.dev/PROJECT/REPO/vsearch-worker-gpu:$(git rev-parse --short HEAD)
FROM apache/beam_python3.11_sdk:2.77.0

# The resolved, pinned set, installed as it is: --no-deps so pip adds nothing the resolution did
# not choose; `pip check` fails the build if the set were inconsistent.
COPY deploy/requirements-worker-gpu.txt /opt/vsearch/requirements-worker-gpu.txt
RUN pip install --no-cache-dir --no-deps -r /opt/vsearch/requirements-worker-gpu.txt \
    && pip check

# This package (code only: its dependencies are the set above).
COPY setup.py /opt/vsearch/src/setup.py
COPY vsearch /opt/vsearch/src/vsearch
COPY pipelines /opt/vsearch/src/pipelines
COPY transforms /opt/vsearch/src/transforms
COPY models /opt/vsearch/src/models
COPY index /opt/vsearch/src/index
RUN pip install --no-cache-dir --no-deps /opt/vsearch/src \
    && python -c "import pipelines.embed, pipelines.build_index, tensorflow, faiss"

# Several SDK processes share the worker's one GPU (one per vCPU unless --large-model): each
# TensorFlow grows its GPU memory as needed instead of taking it all at start-up.
ENV TF_FORCE_GPU_ALLOW_GROWTH=true
# Start-up noise off in worker logs (errors still show).
ENV TF_CPP_MIN_LOG_LEVEL=2

ENTRYPOINT ["/opt/apache/beam/boot"]
