# The one `infergate` binary (gateway, autoscaler, simulator, load generator) in a small non-root image.
#   docker build -t infergate/infergate:0.1.0 .
# Stage 1 builds with the lockfile as committed; stage 2 is distroless (glibc and CA certificates,
# no shell, no package manager). TLS is rustls, so no OpenSSL is needed at run time.

# The toolchain CI compiles with (rust-version in Cargo.toml is the floor, 1.89). Bookworm, so the
# binary links against the same glibc (2.36) as the distroless runtime.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The `dist` profile: release with fat LTO and one codegen unit (Cargo.toml says why).
RUN cargo build --profile dist --locked --bin infergate \
 && cp target/dist/infergate /infergate \
 && strip /infergate

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /infergate /infergate
# distroless's `nonroot` user; the chart runs the pods as 65532 with a read-only root filesystem.
USER 65532:65532
# gateway data, gateway admin, autoscaler admin, simulator
EXPOSE 8080 9090 9091 8000
ENTRYPOINT ["/infergate"]
CMD ["--help"]
