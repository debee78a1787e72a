#!/usr/bin/env bash
# Installs what the tests need beyond the Rust toolchain, from Debian's packages:
#   promtool + prometheus (alert unit tests, the dashboard checked against a real Prometheus),
#   the shell linter shellcheck (deploy/azure/setup.sh), Node.js where the machine has none;
# from PyPI, into a private virtualenv (.test-deps/venv, pinned):
#   kubernetes-validate (the rendered manifests against the Kubernetes OpenAPI schemas),
#   grpcio, grpcio-tools and h2 (KEDA's side of a scaler restart, with gRPC's own client and
#   its standard reconnect backoff; the HTTP/2 GOAWAY at shutdown);
# and from npm, by tests/schemas/package-lock.json (.test-deps/schemas):
#   KEDA's and prometheus-operator's models and TypeScript (the rendered custom resources).
# kubectl with built-in kustomize (v5) ships with this project's machine image; it is checked
# here, not installed: Debian's kubernetes-client is too old for `replacements`.
# Idempotent: does nothing when everything is present.
set -euo pipefail

missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)

if ((${#missing[@]})); then
  mapfile -t pkgs < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "installing Debian packages: ${pkgs[*]}"
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "need root (or sudo) to install ${pkgs[*]}" >&2; exit 1; }
    sudo=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  # The package starts a Prometheus service where an init system runs; the tests start their own.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    "${sudo[@]}" systemctl stop prometheus || true
  fi
fi

# kubernetes-validate: pinned, in the project's own virtualenv (no system Python changes).
KUBERNETES_VALIDATE_VERSION=1.37.0
venv="$(cd "$(dirname "$0")/.." && pwd)/.test-deps/venv"
if ! "$venv/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$KUBERNETES_VALIDATE_VERSION"; then
  echo "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
GRPCIO_VERSION=1.85.1
H2_VERSION=4.4.1
if ! "$venv/bin/python" -c "import grpc, grpc_tools, h2, sys; sys.exit(grpc.__version__ != '$GRPCIO_VERSION' or h2.__version__ != '$H2_VERSION')" 2>/dev/null; then
  echo "installing grpcio $GRPCIO_VERSION, grpcio-tools and h2 $H2_VERSION into $venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "grpcio==$GRPCIO_VERSION" "grpcio-tools==$GRPCIO_VERSION" "h2==$H2_VERSION"
fi

# The custom resources' validators: exactly the lock file's packages, reinstalled when it changes.
# (The models declare Node.js >= 22 but run on 20, this machine's; the warning is expected.)
project="$(cd "$(dirname "$0")/.." && pwd)"
schemas="$project/.test-deps/schemas"
if ! cmp -s "$project/tests/schemas/package-lock.json" "$schemas/package-lock.json" \
  || [ ! -d "$schemas/node_modules/typescript" ]; then
  echo "installing the custom resources' validators into $schemas"
  rm -rf "$schemas"
  mkdir -p "$schemas"
  cp "$project/tests/schemas/package.json" "$project/tests/schemas/package-lock.json" "$schemas/"
  (cd "$schemas" && npm ci --no-audit --no-fund --loglevel=error)
fi

if ! kubectl kustomize --help >/dev/null 2>&1; then
  echo "kubectl with built-in kustomize is required (it ships with this project's machine image)" >&2
  exit 1
fi
echo "test dependencies: $(promtool --version 2>&1 | head -n1); $(shellcheck --version | sed -n 2p); kubectl $(kubectl version --client 2>/dev/null | sed -n 2p); kubernetes-validate $("$venv/bin/kubernetes-validate" --version); grpcio $("$venv/bin/python" -c 'import grpc; print(grpc.__version__)'); node $(node --version)"
