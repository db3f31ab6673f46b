# The gateway image: `agentgw serve` as the unprivileged user agentgw (uid 10001),
# state in /data. docker-compose.yml and deploy/kubernetes/ run it; see deploy/README.md.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY agentgw ./agentgw
COPY gateway ./gateway
COPY clients ./clients
RUN pip install --no-cache-dir .
# The health probe of compose and Kubernetes, and compose's example certificates.
COPY deploy/health_probe.py deploy/example_certs.py ./deploy/
# A numeric uid, so that Kubernetes' runAsNonRoot can check it. The directories that
# compose mounts named volumes on are created here and owned by agentgw: a new named
# volume takes the owner of the directory it is mounted on.
RUN groupadd --system --gid 10001 agentgw \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin agentgw \
    && mkdir -p /data /etc/agentgw/tls \
    && chown 10001:10001 /data /etc/agentgw/tls \
    && chmod 0700 /data
ENV AGENTGW_DATA_DIR=/data \
    AGENTGW_LISTEN=0.0.0.0:50051
VOLUME ["/data"]
# 50051: gRPC; 9090: Prometheus metrics (AGENTGW_METRICS_LISTEN), both over TLS when
# the gateway has a certificate.
EXPOSE 50051 9090
USER 10001:10001
ENTRYPOINT ["agentgw"]
CMD ["serve"]
