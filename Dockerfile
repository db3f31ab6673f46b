FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY agentgw ./agentgw
COPY gateway ./gateway
COPY clients ./clients
RUN pip install --no-cache-dir .
ENV AGENTGW_DATA_DIR=/data \
    AGENTGW_LISTEN=0.0.0.0:50051
VOLUME ["/data"]
EXPOSE 50051
ENTRYPOINT ["agentgw"]
CMD ["serve"]
