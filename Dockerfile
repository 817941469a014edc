# rwsplit's web image: built with the Rust toolchain, run on a slim Debian as a non-root user.
# Templates (askama) and migrations (sqlx::migrate!) are compiled into the binary, so the
# runtime image needs nothing beside it.

# The runtime comes first so that it can be built on its own (`--target runtime`): a machine
# that cannot pull the Rust image copies a binary it built itself into exactly this stage
# (tests/containers/prebuilt/).
FROM debian:bookworm-slim AS runtime
RUN groupadd --system --gid 10001 rwsplit \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin rwsplit
# Numeric, so the host and Kubernetes' runAsNonRoot can verify it is not root.
USER 10001:10001
ENV BIND_ADDR=0.0.0.0:3000 LOG_FORMAT=json
EXPOSE 3000
HEALTHCHECK --interval=5s --timeout=3s --retries=5 CMD ["rwsplit", "healthcheck"]
ENTRYPOINT ["rwsplit"]
CMD ["serve"]

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src

# Dependencies first, in a layer of their own: it is rebuilt only when the manifests change.
COPY Cargo.toml Cargo.lock ./
COPY crates/router/Cargo.toml crates/router/Cargo.toml
RUN mkdir -p src crates/router/src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs crates/router/src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src crates/router/src

COPY crates crates
COPY src src
COPY templates templates
COPY static static
COPY migrations migrations
# touch: the dummy main.rs above is newer than nothing, so make cargo rebuild the real crate.
RUN touch src/main.rs src/lib.rs crates/router/src/lib.rs \
    && cargo build --release --locked \
    && cp target/release/rwsplit /usr/local/bin/rwsplit

FROM runtime
COPY --from=build /usr/local/bin/rwsplit /usr/local/bin/rwsplit
