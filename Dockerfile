# footprints serving image (CPU, ONNX Runtime): the service package and the model store,
# nothing of training/ and no PyTorch. The server needs nothing else: graphs, window
# rules and window memory all come from the store's manifests.
# For `serve --backend torch`, build with --build-arg EXTRAS=torch (CPU wheel of PyTorch).
FROM python:3.11-slim

WORKDIR /app
ARG EXTRAS=""
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# torch first and exactly, from the CPU wheel index, so no CUDA build is pulled.
RUN if [ "$EXTRAS" = "torch" ]; then pip install --no-cache-dir --index-url "$TORCH_INDEX" torch==2.13.0; fi

COPY pyproject.toml README.md ./
COPY service ./service
COPY proto ./proto
COPY model_store ./model_store
# gRPC stubs are build output: generated here from proto/, then installed with the package.
RUN pip install --no-cache-dir grpcio-tools==1.85.1 && python -m service.codegen \
    && pip install --no-cache-dir ".${EXTRAS:+[$EXTRAS]}"

EXPOSE 50051 9100
ENV MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736
ENTRYPOINT ["footprints"]
CMD ["serve", "--store", "model_store", "--host", "0.0.0.0", "--port", "50051", "--metrics-port", "9100"]
