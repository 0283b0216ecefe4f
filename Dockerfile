# m365-sentinel container image: built with the Rust toolchain, run on distroless (glibc,
# libssl, CA certificates; no shell, no package manager) as the non-root user 65532.
#   docker build -t m365-sentinel .
# The binary links OpenSSL 3 (azure_identity's PKCS#12 client certificates), which the
# distroless "cc" image carries.

FROM rust:1.90-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin m365-sentinel \
 && strip target/release/m365-sentinel

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/m365-sentinel /usr/local/bin/m365-sentinel
# The shipped schemas, for `--schemas` or a ConfigMap to replace.
COPY --from=build /src/schemas /etc/m365-sentinel/schemas
USER 65532:65532
# Spool, positions and dead letters live under here: mount a volume (the chart's PVC).
WORKDIR /var/lib/m365-sentinel
ENTRYPOINT ["/usr/local/bin/m365-sentinel"]
CMD ["run", "--config", "/etc/m365-sentinel/config.yaml"]
