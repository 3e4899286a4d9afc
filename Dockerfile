# footprints service image (CPU, ONNX Runtime by default).
FROM python:3.11-slim

WORKDIR /app
# torch first and exactly, from the CPU wheel index, so no CUDA build is pulled.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX" torch==2.13.0

COPY pyproject.toml README.md ./
COPY service ./service
COPY training ./training
COPY proto ./proto
COPY model_store ./model_store
RUN pip install --no-cache-dir .

EXPOSE 50051 9100
ENTRYPOINT ["footprints"]
CMD ["--help"]
