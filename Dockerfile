# syntax=docker/dockerfile:1
# Two images from one build:
#   docker build --target scaler -t ado-scaler:dev .
#   docker build --target agent  -t ado-agent:dev --build-arg AGENT_VERSION=4.261.0 .

ARG RUST_VERSION=1.95

# ---- builder: the release binary -------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked --package ado-scaler --bin ado-scaler \
 && install -D -m 0755 target/dist/ado-scaler /out/ado-scaler

# ---- scaler: minimal runtime, non-root ---------------------------------------------------
# distroless/cc: glibc and CA roots, no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot AS scaler
COPY --from=builder /out/ado-scaler /usr/local/bin/ado-scaler
USER 65532:65532
EXPOSE 9090 8080
ENTRYPOINT ["ado-scaler", "serve"]

# ---- agent: Ubuntu LTS, the Azure Pipelines agent baked in, no Azure CLI -----------------
FROM ubuntu:24.04 AS agent
ARG AGENT_VERSION=4.261.0
ARG TARGETARCH=amd64
ENV DEBIAN_FRONTEND=noninteractive
# iputils-ping: the agent's self-update script waits with `ping`.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl git jq iputils-ping \
 && rm -rf /var/lib/apt/lists/*
# The agent is downloaded once, here, not at every pod start.
RUN case "${TARGETARCH}" in amd64) arch=x64 ;; arm64) arch=arm64 ;; *) echo "unsupported ${TARGETARCH}" >&2; exit 1 ;; esac \
 && mkdir -p /azp/agent \
 && curl -fsSL "https://download.agent.dev.azure.com/agent/${AGENT_VERSION}/vsts-agent-linux-${arch}-${AGENT_VERSION}.tar.gz" \
    | tar -xz -C /azp/agent \
 && /azp/agent/bin/installdependencies.sh \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 --user-group azp \
 && chown -R azp:azp /azp
COPY --from=builder /out/ado-scaler /usr/local/bin/ado-scaler
USER 10001:10001
WORKDIR /azp/agent
ENV AZP_AGENT_DIR=/azp/agent
ENTRYPOINT ["ado-scaler", "agent"]
