# shellcheck shell=bash
# Builds the local Docker images the privileged backend tests use. This
# machine's engine has no registry, so every image is made here: a static
# `cluster-test-http` (with its few shared libraries) imported as its own image, and a Debian rootfs with
# systemd as PID 1 (debootstrap from Debian's packages).
#
# Expensive artifacts are cached under .tools/cache/, keyed by a version
# string: bump the version to rebuild.
#
#   source scripts/lib/images.sh
#   ensure_test_http_image      # → image cluster-test-http:test, exports TEST_HTTP_BIN
#   ensure_systemd_image        # → image cluster-systemd:bookworm-1

IMAGES_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
IMAGES_CACHE="$IMAGES_ROOT/.tools/cache"
TEST_HTTP_IMAGE="cluster-test-http:test"
SYSTEMD_IMAGE_VERSION="bookworm-1"
SYSTEMD_IMAGE="cluster-systemd:$SYSTEMD_IMAGE_VERSION"
mkdir -p "$IMAGES_CACHE"

# build_test_http: builds cluster-test-http (a std + tokio binary) and
# exports TEST_HTTP_BIN. It runs with the libraries `ldd` lists, so an image
# needs only the binary and those files; a fully static build also works
# (RUSTFLAGS="-C target-feature=+crt-static" cargo build --target
# x86_64-unknown-linux-gnu ...) but compiles every dependency a second time.
build_test_http() {
  local target_dir="${CARGO_TARGET_DIR:-$IMAGES_ROOT/target}"
  (cd "$IMAGES_ROOT" && cargo build --quiet -p cluster-testing --bin cluster-test-http) >&2 || return 1
  export TEST_HTTP_BIN="$target_dir/debug/cluster-test-http"
  [ -x "$TEST_HTTP_BIN" ] || { echo "no $TEST_HTTP_BIN" >&2; return 1; }
}

# ensure_test_http_image: imports a rootfs holding only cluster-test-http and
# its shared libraries as image cluster-test-http:test (re-imported each call:
# it takes a second and follows the binary).
ensure_test_http_image() {
  build_test_http || return 1
  local dir lib
  dir="$(mktemp -d)"
  mkdir -p "$dir/rootfs"
  cp "$TEST_HTTP_BIN" "$dir/rootfs/cluster-test-http"
  for lib in $(ldd "$TEST_HTTP_BIN" | grep -o '/[^ ]*'); do
    mkdir -p "$dir/rootfs$(dirname "$lib")"
    cp -L "$lib" "$dir/rootfs$lib"
  done
  tar -C "$dir/rootfs" -cf "$dir/rootfs.tar" .
  docker import -c 'ENTRYPOINT ["/cluster-test-http"]' "$dir/rootfs.tar" "$TEST_HTTP_IMAGE" >/dev/null
  local rc=$?
  rm -rf "$dir"
  return $rc
}

# ensure_systemd_image: a minimal Debian bookworm with systemd and dbus, as
# image cluster-systemd:$SYSTEMD_IMAGE_VERSION. The rootfs tar is cached; the
# import is skipped when the engine already has the image.
ensure_systemd_image() {
  if docker image inspect "$SYSTEMD_IMAGE" >/dev/null 2>&1; then
    return 0
  fi
  local tar="$IMAGES_CACHE/systemd-rootfs-$SYSTEMD_IMAGE_VERSION.tar"
  if [ ! -s "$tar" ]; then
    if ! command -v debootstrap >/dev/null; then
      apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >&2
    fi
    local dir="$IMAGES_CACHE/systemd-rootfs-$SYSTEMD_IMAGE_VERSION.d"
    rm -rf "$dir"
    echo "debootstrap bookworm into $dir (a few minutes)" >&2
    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus bookworm "$dir" >&2 || return 1
    # No getty, no network management: the container only runs test units.
    rm -f "$dir"/etc/systemd/system/getty.target.wants/* \
      "$dir"/etc/systemd/system/multi-user.target.wants/systemd-networkd.service 2>/dev/null
    # Keep journald and logind quiet and fast in a container.
    echo 'container' >"$dir/etc/hostname"
    tar -C "$dir" -cf "$tar.tmp" . && mv "$tar.tmp" "$tar"
    rm -rf "$dir"
  fi
  docker import -c 'ENTRYPOINT ["/lib/systemd/systemd"]' "$tar" "$SYSTEMD_IMAGE" >/dev/null
}
