# syntax=docker/dockerfile:1.7
# Production Triton: NVIDIA's NGC image with its native onnxruntime backend (GPU), serving the model
# repository `couturier export` writes (config.pbtxt with backend "onnxruntime" + <N>/model.onnx).
# 24.10 is Triton 2.51, the server version the local CPU tests run; bump TRITON_IMAGE deliberately.
#
#   mounted repository (default target):
#     docker build -f docker/triton.Dockerfile --target triton -t couturier/triton:24.10 .
#     docker run --gpus all -v "$PWD/var/model_repository:/models:ro" -p 8001:8001 couturier/triton:24.10
#   repository baked into the image (immutable model set per tag):
#     docker build -f docker/triton.Dockerfile --target triton-baked \
#       --build-arg MODEL_REPOSITORY=var/model_repository -t couturier/triton-models:<tag> .
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3

FROM ${TRITON_IMAGE} AS triton
# 8000 HTTP (health: /v2/health/ready), 8001 gRPC (the services, model control), 8002 Prometheus metrics
EXPOSE 8000 8001 8002
# the NGC image creates the non-root user triton-server with UID 1000
USER triton-server
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8000/v2/health/ready || exit 1
# explicit model control: the 12 couturier models load at start; versions change only through
# load/unload calls (couturier triton rollout | promote | rollback)
CMD ["tritonserver", \
     "--model-repository=/models", \
     "--model-control-mode=explicit", \
     "--disable-auto-complete-config", \
     "--load-model=item_encoder", \
     "--load-model=generator", \
     "--load-model=discriminator", \
     "--load-model=retrieval_encoder", \
     "--load-model=text_encoder", \
     "--load-model=query_generator", \
     "--load-model=pref_grad", \
     "--load-model=inv_grad", \
     "--load-model=shift_grad", \
     "--load-model=pref_loop", \
     "--load-model=inv_loop", \
     "--load-model=shift_loop", \
     "--http-port=8000", \
     "--grpc-port=8001", \
     "--metrics-port=8002", \
     "--exit-timeout-secs=30"]

FROM triton AS triton-baked
ARG MODEL_REPOSITORY=var/model_repository
COPY --chown=1000:1000 ${MODEL_REPOSITORY}/ /models/
