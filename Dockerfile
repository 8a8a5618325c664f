# freshrank application image: the updater (online trainer + exporter), the simulator and
# the `freshrank` CLI. Serving is done by the NGC Triton image (see compose.yaml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

COPY pyproject.toml README.md ./
COPY rankcore ./rankcore
COPY updater ./updater
COPY exporter ./exporter
COPY freshrank ./freshrank
COPY model_repository ./model_repository

# CPU build of PyTorch. For CUDA training, use the matching cu12x index instead
# (e.g. https://download.pytorch.org/whl/cu124) and give the updater a GPU in compose;
# serving on GPU is already handled by the NGC Triton image.
# Editable, so the code finds model_repository/ranker/config.pbtxt beside it.
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu -e .

# Non-root runtime user. /models and /state are created here and owned by it so that
# fresh named volumes mounted there take that ownership and the updater can write them.
RUN groupadd --system --gid 10001 freshrank \
 && useradd --system --uid 10001 --gid freshrank --home-dir /app --no-create-home freshrank \
 && mkdir -p /models /state \
 && chown freshrank:freshrank /models /state

USER freshrank

# compose.yaml passes full commands (`freshrank updater ...`, `freshrank simulate ...`).
CMD ["freshrank", "--help"]
