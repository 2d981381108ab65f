# authgate container image.
#
#   docker build -t authgate:0.1.0 .
#   docker run --rm -p 50051:50051 -p 8080:8080 \
#     -v "$PWD/examples/quickstart/auth.yaml:/etc/authgate/auth.yaml:ro" authgate:0.1.0
#
# The entrypoint is `authgate serve`; the config is read from $AUTHGATE_CONFIG
# (/etc/authgate/auth.yaml: mount it, the image ships none). Other commands:
#   docker run --rm --entrypoint /usr/local/bin/authgate authgate:0.1.0 validate --config FILE
# No HEALTHCHECK: in Kubernetes the probes (GET /healthz, GET /readyz on :8080)
# do that job (see helm/authgate).

# Fully qualified, so that every builder (Docker, Podman, Buildah) resolves
# them the same way. scripts/check-image.sh builds this file with stand-ins
# assembled from Debian packages.
ARG RUST_IMAGE=docker.io/library/rust:1-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS builder
WORKDIR /build
# Line tables and debug info are not needed in the image (the profile's
# `debug = 1` is for local profiling); symbols stay for readable backtraces.
ENV CARGO_TERM_COLOR=never \
    CARGO_PROFILE_RELEASE_DEBUG=0

# 1. Dependencies, in their own layer: rebuilt only when the manifest, the
#    lock file or the build script change. Every target the workspace's
#    manifests name gets an empty stand-in (authgate's library and binary,
#    the authgate-core library, the Envoy module's library, the benchmark
#    package's two binaries), so
#    that cargo resolves the workspace as it will in step 2.
#    libsqlite3 (sqlx's bundled SQLite) and aws-lc are compiled with the
#    image's C compiler.
COPY Cargo.toml Cargo.lock build.rs ./
COPY crates/core/Cargo.toml ./crates/core/
COPY envoy/module/Cargo.toml ./envoy/module/
COPY bench/Cargo.toml ./bench/
# `--cfg tokio_unstable`, for the runtime's scheduling (src/server.rs: runtime).
COPY .cargo ./.cargo
RUN mkdir -p src crates/core/src envoy/module/src bench/src \
 && echo 'fn main() {}' > src/main.rs \
 && : > src/lib.rs \
 && : > crates/core/src/lib.rs \
 && : > envoy/module/src/lib.rs \
 && echo 'fn main() {}' > bench/src/noop.rs \
 && echo 'fn main() {}' > bench/src/load.rs \
 && cargo build --release --locked -p authgate \
 && rm -rf src crates/core/src

# 2. authgate itself. The stand-ins' fingerprints (authgate-*, authgate-core
#    included) are removed so that cargo rebuilds both crates whatever the
#    sources' timestamps are. The benchmark binaries keep their stand-ins:
#    the image does not ship them.
COPY src ./src
# The browser client authgate serves at /elevation/client.js.
COPY clients/elevation/client.js ./clients/elevation/client.js
COPY crates/core/src ./crates/core/src
RUN rm -rf target/release/.fingerprint/authgate-* \
 && touch src/main.rs src/lib.rs crates/core/src/lib.rs \
 && cargo build --release --locked --bin authgate \
 && mkdir -p /out/bin /out/var-lib/authgate \
 && cp target/release/authgate /out/bin/authgate \
 && /out/bin/authgate --version

FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="authgate" \
      org.opencontainers.image.description="External authorization for Envoy, Istio, nginx and Traefik in front of Hasura" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
COPY --from=builder /out/bin/authgate /usr/local/bin/authgate
# Writable working directory for the nonroot user: a relative SQLite
# elevation store (sqlite://authgate.db) lives here. The Helm chart mounts a
# volume over it and keeps the root filesystem read-only.
COPY --from=builder --chown=65532:65532 /out/var-lib/ /var/lib/
WORKDIR /var/lib/authgate
ENV AUTHGATE_CONFIG=/etc/authgate/auth.yaml \
    AUTHGATE_GRPC_ADDR=0.0.0.0:50051 \
    AUTHGATE_HTTP_ADDR=0.0.0.0:8080
# distroless' nonroot user, numeric so that Kubernetes can verify runAsNonRoot.
USER 65532:65532
# 50051: gRPC ext_authz (Envoy/Istio); 8080: HTTP forward-auth, Hasura
# webhook, WebAuthn, /metrics, /healthz, /readyz.
EXPOSE 50051 8080
# SIGTERM drains in-flight decisions (up to 25 s), then exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/authgate", "serve"]
