# GPU image of the PFGM pipeline: the package, its pinned dependencies, the DVC pipeline and the paper
# configurations. Build and run (README.md, "Docker"):
#   docker build -t pfgm .
#   docker run --gpus all -v $PWD/data:/app/data -v $PWD/models:/app/models pfgm
# The default command runs prepare -> train -> evaluate on params.yaml as one Prefect flow
# (python -m flows.pipeline), which needs no git or DVC repository; `dvc repro` works too (see below).
#
# Base image: python:3.11.7-slim-bookworm (Python 3.11.7, the interpreter the test suite ran on), not
# nvidia/cuda. torch 2.14.1's default PyPI wheel is built for CUDA 13.0 and brings the CUDA runtime,
# cuDNN, cuBLAS, NCCL, ... itself as pip packages (nvidia-*, pinned in docker/requirements.lock), so the
# image needs only the host's NVIDIA driver (R580 or newer for CUDA 13.0), which the NVIDIA Container
# Toolkit mounts in with `docker run --gpus all`. An nvidia/cuda:13.0-cudnn-runtime base would add a
# second copy of the same libraries (gigabytes) and Ubuntu's Python (3.12 on 24.04), not 3.11.
FROM python:3.11.7-slim-bookworm

# Telemetry off (Prefect, MLflow, DVC and anything honouring DO_NOT_TRACK); nothing phones home.
ENV PREFECT_SERVER_ANALYTICS_ENABLED=false \
    MLFLOW_DISABLE_TELEMETRY=true \
    DVC_NO_ANALYTICS=1 \
    DO_NOT_TRACK=1 \
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# The user the pipeline runs as; its UID must be able to write the mounted data/ and models/ folders
# (build with --build-arg UID=$(id -u) to match yours).
ARG UID=1000
RUN useradd --create-home --uid "${UID}" --user-group pfgm
WORKDIR /app

# Dependencies before the code, so that editing the code reuses these layers. torch and torchvision
# first (the largest layer, with the CUDA libraries), at the versions the tests ran with.
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
COPY docker/requirements.lock docker/requirements.lock
RUN pip install pip==26.3 \
 && pip install -c docker/requirements.lock "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
RUN pip install -r docker/requirements.lock

# The package itself (its dependencies are all in already: --no-deps, then pip check proves it).
COPY pyproject.toml README.md ./
COPY pfgm/ pfgm/
COPY flows/ flows/
RUN pip install --no-deps . && pip check && rm -rf build pfgm.egg-info

# The pipeline: stages, default params and the paper configurations.
COPY dvc.yaml params.yaml .dvcignore ./
COPY configs/ configs/
RUN mkdir -p data models metrics && chown -R pfgm:pfgm /app

USER pfgm
# A DVC repository without git (the image has no .git), so that `dvc repro` runs in the container too.
RUN dvc init --no-scm --quiet && dvc config core.analytics false

# Raw and prepared data, and the Inception weights (data/inception-2015-12-05.pt); trained models.
VOLUME ["/app/data", "/app/models"]
CMD ["python", "-m", "flows.pipeline", "--params", "params.yaml"]
