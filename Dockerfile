# syntax=docker/dockerfile:1
# One image, two programs: tollgate-control-plane (default command) and
# tollgate-edge. Used by docker-compose.yml.
#
#   docker build -t tollgate .
#   docker run --rm tollgate tollgate-edge ...

# ---- build ------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder
WORKDIR /src

# The whole workspace (every member must be present for cargo to load it);
# .dockerignore keeps target/, .tollgate/, .venv/ and .git/ out of the context.
# migrations/ is embedded into the control plane by sqlx::migrate!.
COPY . .

RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tollgate-control-plane --bin tollgate-edge \
    && mkdir -p /out \
    && cp target/release/tollgate-control-plane target/release/tollgate-edge /out/

# ---- runtime ----------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates for outbound TLS (Stripe); curl for the container healthchecks.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 tollgate \
    && useradd --system --uid 10001 --gid tollgate --home-dir /var/lib/tollgate \
       --shell /usr/sbin/nologin tollgate \
    && mkdir -p /var/lib/tollgate/edge \
    && chown -R tollgate:tollgate /var/lib/tollgate

COPY --from=builder /out/tollgate-control-plane /out/tollgate-edge /usr/local/bin/

USER tollgate
WORKDIR /var/lib/tollgate
ENV RUST_LOG=info
EXPOSE 7700 7701
CMD ["tollgate-control-plane"]
