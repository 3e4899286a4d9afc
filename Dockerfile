# footprints serving image (CPU: ONNX Runtime and OpenVINO): the service package and the
# store versions it serves, nothing of training/ and no PyTorch. The server needs nothing
# else: graphs, window rules and window memory all come from the store's manifests.
#
#   podman build -t footprints .                          # python:3.11-slim, the default model
#   podman build --build-arg MODELS=amll,onera:1 ...      # and these versions besides
#   podman build --build-arg BASE=footprints-base:bookworm ...   # any base with python3.11 + venv
#   podman build --build-arg EXTRAS=torch ...             # serve --backend torch (CPU PyTorch)
#
# scripts/image-test.sh builds it here from a Debian base made with debootstrap, runs it and
# checks its mask against the in-process one (docs/image.md). Dockerfile.gpu shares the
# layout below (/opt/venv, /app/model_store, user footprints, the same entry point).
ARG BASE=python:3.11-slim

# Stage 1: the part of the store the image serves (the default model, MODELS, ensemble
# members), chosen by a standard-library script: nothing is installed here yet.
FROM ${BASE} AS store
ARG MODELS=""
COPY service/store/subset.py /subset.py
COPY model_store /model_store
RUN python3 /subset.py --store /model_store --out /store --models "$MODELS"

FROM ${BASE}
ARG EXTRAS=""
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# A virtual environment: the same on python:3.11-slim and on Debian's python3.11, whose
# system pip refuses to install (PEP 668).
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
# torch first and exactly, from the CPU wheel index, so no CUDA build is pulled.
RUN if [ "$EXTRAS" = "torch" ]; then pip install --no-cache-dir --index-url "$TORCH_INDEX" torch==2.13.0; fi
COPY pyproject.toml README.md ./
COPY service ./service
COPY proto ./proto
# gRPC stubs are build output: generated here from proto/, then installed with the package.
RUN pip install --no-cache-dir grpcio-tools==1.85.1 && python -m service.codegen \
    && pip install --no-cache-dir ".${EXTRAS:+[$EXTRAS]}" \
    && rm -rf service proto
COPY --from=store /store ./model_store
# Not root. FOOTPRINTS_CACHE (measured window speeds, compiled engines) is a volume, so a
# restarted container measures and compiles nothing.
RUN useradd --uid 10001 --home-dir /home/footprints --create-home footprints \
    && mkdir -p /cache && chown footprints /cache
USER footprints
# Serving on another port? Set FOOTPRINTS_HEALTH_SERVER=127.0.0.1:PORT for the health check.
ENV FOOTPRINTS_CACHE=/cache FOOTPRINTS_HEALTH_SERVER=127.0.0.1:50051 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736
VOLUME ["/cache"]
EXPOSE 50051 9100
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
    CMD ["footprints", "health"]
ENTRYPOINT ["footprints"]
CMD ["serve", "--store", "model_store", "--host", "0.0.0.0", "--port", "50051", "--metrics-port", "9100"]
