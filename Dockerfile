# gsv-serve, CPU image: ONNX Runtime / torch on CPU.  Build from the repository root:
#   docker build -t gsv-serve:0.1.0-cpu .
# The bundle is not in the image: mount it (deploy/k8s mounts the gsv-models volume at /models).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends libsndfile1 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/gsv
COPY pyproject.toml README.md ./
COPY gsv ./gsv
COPY server ./server
COPY protos ./protos
COPY clients ./clients
COPY export ./export
COPY trainer ./trainer
COPY benchmarks ./benchmarks
RUN pip install ".[serve,export]"

RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin gsv
USER 10001
# gRPC, HTTP doors, Prometheus metrics (the ports of deploy/k8s)
EXPOSE 50051 9880 9090
ENTRYPOINT ["gsv-serve"]
CMD ["--bundle=/models/bundle", "--voices=/var/lib/gsv/voices", "--host=0.0.0.0", "--port=50051", "--http-port=9880", "--metrics-port=9090"]
