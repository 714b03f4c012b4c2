# One Dockerfile, two images (no Docker engine is needed to work on this repo; the
# paths and user below are checked by agent/tests/k8s.rs):
#   docker build --target minirag-agent -t ghcr.io/minirag/minirag-agent:0.1.0 .
#   docker build --target rag-core      -t ghcr.io/minirag/rag-core:0.1.0 .
# Runtime: distroless, no shell, user 65532 (the uid the Kubernetes manifests and the
# injector's securityContext use). No HEALTHCHECK: Kubernetes probes do that.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p rag-core -p minirag-agent \
 && install -D -m 0755 target/release/rag-core /out/rag-core \
 && install -D -m 0755 target/release/minirag-agent /out/minirag-agent

FROM gcr.io/distroless/cc-debian12:nonroot AS rag-core
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="rag-core" \
      org.opencontainers.image.description="Mini-RAG retrieval-augmented generation service" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/rag-core /usr/local/bin/rag-core
COPY config/rag-core.yaml /etc/rag-core/rag-core.yaml
USER 65532:65532
EXPOSE 8000
ENTRYPOINT ["/usr/local/bin/rag-core"]
CMD ["serve", "--config", "/etc/rag-core/rag-core.yaml", "--listen", "0.0.0.0:8000", "--data-dir", "/data"]

FROM gcr.io/distroless/cc-debian12:nonroot AS minirag-agent
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="minirag-agent" \
      org.opencontainers.image.description="Mini-RAG sidecar: proxy, log shipper, injector" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/minirag-agent /usr/local/bin/minirag-agent
COPY config/agent.yaml /etc/minirag-agent/agent.yaml
USER 65532:65532
EXPOSE 8080 9901
ENTRYPOINT ["/usr/local/bin/minirag-agent"]
CMD ["run", "--config", "/etc/minirag-agent/agent.yaml", "--listen", "0.0.0.0:8080", "--admin-listen", "0.0.0.0:9901"]
