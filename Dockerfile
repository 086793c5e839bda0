# syntax=docker/dockerfile:1
# Build: docker build -t runnel .
# Run:   docker run -p 8080:8080 -e RUNNEL_BROKERS=kafka:9092 -v runnel-data:/data runnel

FROM rust:1.94-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin runnel \
    && cp target/release/runnel /usr/local/bin/runnel

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data --create-home runnel
COPY --from=build /usr/local/bin/runnel /usr/local/bin/runnel
USER runnel
WORKDIR /data
# The server listens beyond loopback, so it refuses to start without
# RUNNEL_TOKEN (or an explicit RUNNEL_NO_AUTH=true).
ENV RUNNEL_DATA_DIR=/data \
    RUNNEL_LOG_FORMAT=json
VOLUME ["/data"]
EXPOSE 8080
ENTRYPOINT ["runnel", "serve", "--listen", "0.0.0.0:8080"]
