# One image with all five service binaries; docker-compose.yml picks the binary per service with `command`.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins \
      -p system -p backend -p gateway -p zync -p zync-que

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 app
COPY --from=build /src/target/release/system /src/target/release/backend /src/target/release/gateway \
                  /src/target/release/zync /src/target/release/zync-que /usr/local/bin/
USER app
ENV LOG_FORMAT=json
CMD ["system"]
