# The origin as a container image. Build from the repository root:
#   docker build -t gatehouse-origin .
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p gatehouse-origin

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 gatehouse
COPY --from=build /src/target/release/gatehouse-origin /usr/local/bin/gatehouse-origin
USER gatehouse
# The API, and Prometheus metrics (unauthenticated: keep 9007 on the private network).
ENV METRICS_LISTEN_ADDR=0.0.0.0:9007
EXPOSE 8007 9007
# The image has no curl: the binary asks its own /health (OCI images drop HEALTHCHECK; with
# podman, build with --format docker).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s CMD ["gatehouse-origin", "healthcheck"]
ENTRYPOINT ["gatehouse-origin"]
CMD ["serve"]
