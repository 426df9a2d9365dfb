# syntax=docker/dockerfile:1
# Container images of Casserole, one target each:
#
#   docker build --target node     -t ghcr.io/casserole-cache/casserole-node:0.1.0 .
#   docker build --target operator -t ghcr.io/casserole-cache/casserole-operator:0.1.0 .
#
# Release builds in a Rust builder; the runtime is distroless (glibc, CA certificates, no shell,
# no package manager) running as the unprivileged "nonroot" user 65532, the uid the operator's
# pods and the Helm chart run as.
#
# checkov:skip=CKV_DOCKER_2: No HEALTHCHECK: the images have no shell or HTTP client to run one; Kubernetes probes /healthz and /readyz instead

FROM rust:1-bookworm AS builder
# etcd-client's build script compiles protobuf definitions with protoc.
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY limits ./limits
COPY node ./node
COPY operator ./operator
COPY tests ./tests
# The disk tier's directory, owned by the runtime user (distroless has no shell to mkdir it).
RUN mkdir -p /out/var/cache/casserole && chown -R 65532:65532 /out/var/cache/casserole

FROM builder AS build-node
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=casserole-target-node \
    cargo build --release --locked -p casserole-node \
 && cp target/release/casserole-node /out/casserole-node

FROM builder AS build-operator
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=casserole-target-operator \
    cargo build --release --locked -p casserole-operator \
 && cp target/release/casserole-operator /out/casserole-operator

# casserole-node: client port 8080, admin (/metrics, /healthz, /readyz) 9090, peer API 8000.
FROM gcr.io/distroless/cc-debian12:nonroot AS node
LABEL org.opencontainers.image.title="casserole-node" \
      org.opencontainers.image.description="Casserole cache node: a distributed HTTP cache for large objects" \
      org.opencontainers.image.source="https://github.com/casserole-cache/casserole" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build-node /out/casserole-node /usr/local/bin/casserole-node
COPY --from=build-node --chown=65532:65532 /out/var/cache/casserole /var/cache/casserole
# Listen on every interface in a container (the binary's own default is loopback) and keep the
# disk tier in the prepared directory; flags given at run time override both.
ENV CASSEROLE_ADDRESS=0.0.0.0:8080 \
    CASSEROLE_DISK_CACHE_DIR=/var/cache/casserole
USER 65532:65532
EXPOSE 8080 9090 8000
ENTRYPOINT ["/usr/local/bin/casserole-node"]

# casserole-operator: /metrics and /healthz on 8080. Its command is `run` (also `crd`, `render`).
FROM gcr.io/distroless/cc-debian12:nonroot AS operator
LABEL org.opencontainers.image.title="casserole-operator" \
      org.opencontainers.image.description="Casserole Kubernetes operator: reconciles CasseroleCache resources" \
      org.opencontainers.image.source="https://github.com/casserole-cache/casserole" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build-operator /out/casserole-operator /usr/local/bin/casserole-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/casserole-operator"]
CMD ["run"]
