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
# gRPC stubs are build output: generated here from proto/, then installed with the package.
RUN pip install --no-cache-dir grpcio-tools==1.85.1 && python -m service.codegen && pip install --no-cache-dir .

EXPOSE 50051 9100
ENV MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736
ENTRYPOINT ["footprints"]
CMD ["serve", "--store", "model_store", "--host", "0.0.0.0", "--port", "50051", "--metrics-port", "9100"]
