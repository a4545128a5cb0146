# syntax=docker/dockerfile:1
# One image for the whole fleet: aegis-coordinator, aegis-worker, the operator
# CLI aegis (which also runs the schema migration) and aegis-sim (vendor
# simulators, for demos). The Helm chart in helm/aegis picks the binary with the
# container command.
#
#   docker build -t registry.example.com/aegis:0.1.0 .
#
# No container engine runs on the project's machines, so this file is not built
# in CI; see docs/deploy.md.

# The locked dependencies need Rust 1.89 or newer; the project builds with 1.95.
ARG RUST_VERSION=1.95

# ---- build: the four release binaries, dependencies cached in a layer of their own
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# The whole workspace is needed (every member's Cargo.toml, and migrations/,
# which sqlx embeds at compile time); .dockerignore keeps target/ and the rest out.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
        --bin aegis-coordinator --bin aegis-worker --bin aegis --bin aegis-sim \
 && mkdir -p /out \
 && cp target/release/aegis-coordinator target/release/aegis-worker \
       target/release/aegis target/release/aegis-sim /out/

# ---- run: glibc and CA certificates only, no shell, no package manager
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="aegis" \
      org.opencontainers.image.description="Aegis security automation: coordinator, worker, CLI and simulators" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/ /usr/local/bin/
# A numeric, non-root user (Kubernetes can check runAsNonRoot against it); the
# chart runs the same UID with a read-only root filesystem and a /tmp emptyDir.
USER 10001:10001
# /metrics, /healthz and /readyz when AEGIS_HTTP_ADDR=0.0.0.0:9090 (the chart's setting).
ENV AEGIS_HTTP_ADDR=0.0.0.0:9090 \
    AEGIS_LOG_COLOR=never
EXPOSE 9090
# The chart sets the command of each container; the default runs a worker.
CMD ["aegis-worker"]
