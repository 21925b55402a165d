# Build accrue and run it on a slim Debian. No libpq: the PostgreSQL driver is pure Rust.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY config ./config
COPY benches ./benches
COPY assets ./assets
RUN cargo build --release --locked --bin accrue

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin accrue
WORKDIR /app
COPY --from=build /src/target/release/accrue /usr/local/bin/accrue
COPY pricing-plans ./pricing-plans
COPY config ./config
ENV ACCRUE_BIND=0.0.0.0:8080 \
    ACCRUE_PLANS_DIR=/app/pricing-plans \
    ACCRUE_REVOPS_FILE=/app/config/revops.toml \
    RUST_LOG=info
EXPOSE 8080
# Not root: the service needs no privilege (it binds 8080 and talks to PostgreSQL and Stripe).
USER accrue
HEALTHCHECK --interval=10s --timeout=3s CMD curl -fsS http://127.0.0.1:8080/readyz || exit 1
ENTRYPOINT ["accrue"]
CMD ["serve"]
