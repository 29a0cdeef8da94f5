# syntax=docker/dockerfile:1
# Build: a dependency layer cached on Cargo.toml/Cargo.lock, then the crate itself.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src seed \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src
COPY seed ./seed
COPY assets ./assets
COPY src ./src
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked \
 && cp target/release/myriad-orchestrator /myriad-orchestrator

# Run: distroless (glibc + CA certificates, no shell, no package manager), non-root.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /myriad-orchestrator /usr/local/bin/myriad-orchestrator
COPY seed /seed
USER 65532:65532
ENV HOST=0.0.0.0 PORT=5000
EXPOSE 5000
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/myriad-orchestrator", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/myriad-orchestrator"]
CMD ["serve"]
