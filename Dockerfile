# The origin as a container image. From the repository root:
#   docker build -t gatehouse-origin .
#   podman build --format docker -t gatehouse-origin .   (the OCI format drops HEALTHCHECK)
# `cargo xtask image --full` runs this whole build with podman; `cargo xtask image` builds the
# `prebuilt` target instead: the same runtime stage around a release binary built on the host (CI
# gives it the debug binary its tests ran).
# Both stages start from debian:bookworm-slim; where no registry answers, `cargo xtask image`
# builds that base from Debian's packages (mmdebstrap) and tags it with this name.

# Build: rustup's pinned toolchain on Debian, with the registry and target directory kept in cache
# mounts, so a rebuild after a source change compiles only the workspace's own crates.
FROM debian:bookworm-slim AS build
ARG RUST_VERSION=1.95.0
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:$PATH
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates curl gcc libc6-dev libssl-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
# Behind a TLS-intercepting proxy, pass its CA bundle as a build secret (never a layer):
#   --secret id=ca-certificates,src=/etc/ssl/certs/ca-certificates.crt
# rustup-init is checked against the digest published beside it.
RUN --mount=type=secret,id=ca-certificates \
    set -eu; \
    if [ -s /run/secrets/ca-certificates ]; then \
        export CURL_CA_BUNDLE=/run/secrets/ca-certificates SSL_CERT_FILE=/run/secrets/ca-certificates; \
    fi; \
    url="https://static.rust-lang.org/rustup/dist/$(uname -m)-unknown-linux-gnu/rustup-init"; \
    curl --proto '=https' --tlsv1.2 -sSfo /tmp/rustup-init "$url"; \
    echo "$(curl --proto '=https' --tlsv1.2 -sSf "$url.sha256" | cut -d' ' -f1)  /tmp/rustup-init" \
        | sha256sum -c -; \
    chmod +x /tmp/rustup-init; \
    /tmp/rustup-init -y --no-modify-path --profile minimal --default-toolchain "$RUST_VERSION"; \
    rm /tmp/rustup-init
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    --mount=type=secret,id=ca-certificates \
    if [ -s /run/secrets/ca-certificates ]; then export CARGO_HTTP_CAINFO=/run/secrets/ca-certificates; fi; \
    cargo build --release --locked -p gatehouse-origin --bin gatehouse-origin \
    && objcopy --strip-debug target/release/gatehouse-origin /usr/local/bin/gatehouse-origin
# (Without its line tables the binary is 17 MB instead of 73: panics and profilers still name
# functions, not lines. Keep target/release's copy where line numbers matter.)

# Runtime: the binary and OpenSSL's libssl3 (webauthn-rs verifies passkeys with it; TLS is
# rustls), as an unprivileged user. A base that has libssl3 already (`cargo xtask image` builds
# one) skips the download.
FROM debian:bookworm-slim AS runtime
RUN if ! dpkg -s libssl3 >/dev/null 2>&1; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libssl3 \
        && rm -rf /var/lib/apt/lists/*; \
    fi
RUN useradd --uid 10001 --no-create-home --no-log-init --shell /usr/sbin/nologin gatehouse
# Numeric, so that runtimes enforcing "run as non-root" can check it without reading /etc/passwd.
USER 10001
# The API, and Prometheus metrics (unauthenticated: keep 9007 on the private network).
ENV LISTEN_ADDR=0.0.0.0:8007 METRICS_LISTEN_ADDR=0.0.0.0:9007
EXPOSE 8007 9007
# The image has no curl: the binary asks its own /health.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s CMD ["gatehouse-origin", "healthcheck"]
# SIGTERM drains requests for up to SHUTDOWN_GRACE_SECS (25 by default), then exits 0: give the
# runtime's stop timeout a little more (docker stop -t 30, Kubernetes' default grace is 30 s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["gatehouse-origin"]
CMD ["serve"]

# Smoke tests: podman build --target prebuilt --build-context host-binary=DIR, where DIR holds a
# gatehouse-origin built on a bookworm (glibc 2.36) host (release, or CI's debug build).
FROM runtime AS prebuilt
COPY --from=host-binary gatehouse-origin /usr/local/bin/gatehouse-origin

# The default target: the binary from the build stage.
FROM runtime
COPY --from=build /usr/local/bin/gatehouse-origin /usr/local/bin/gatehouse-origin
