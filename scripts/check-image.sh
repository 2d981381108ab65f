#!/usr/bin/env bash
# Builds the Dockerfile for real with Buildah (chroot isolation, no daemon),
# then runs the image: `authgate --version`, and `authgate serve` answering
# /healthz. No container registry is needed: the two base images the
# Dockerfile takes as build arguments are assembled here from Debian packages
# (deb.debian.org, the same Debian release as the upstream images):
#
#   RUST_IMAGE     Debian bookworm with a C compiler, plus this machine's Rust
#                  toolchain (what docker.io/library/rust:1-bookworm holds),
#                  with an empty CARGO_HOME: the build downloads every crate
#                  itself, as on a fresh machine.
#   RUNTIME_IMAGE  glibc, libgcc, a CA bundle and the nonroot user 65532
#                  (what gcr.io/distroless/cc-debian12:nonroot holds).
#
# Everything (images, layers, containers) lives in a private Buildah storage
# under a temporary directory, removed at the end.
#
# Needs: buildah, mmdebstrap (Debian packages), rustc on PATH, curl.
# Usage: bash scripts/check-image.sh
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in buildah mmdebstrap rustc curl; do
  command -v "$tool" >/dev/null || { echo "check-image: $tool is required" >&2; exit 1; }
done

work=$(mktemp -d "${TMPDIR:-/var/tmp}/authgate-image.XXXXXX")
bh() { buildah --root "$work/storage" --runroot "$work/run" "$@"; }
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  bh rm --all >/dev/null 2>&1 || true
  bh rmi --all --force >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
RUST_BASE=localhost/authgate-check/rust:bookworm
RUNTIME_BASE=localhost/authgate-check/runtime:bookworm
IMAGE=localhost/authgate-check/authgate:ci

echo "==> builder base: Debian bookworm, C compiler, Rust $(rustc --version | cut -d' ' -f2)"
mmdebstrap --quiet --variant=minbase --include=ca-certificates,gcc,g++,libc6-dev,make \
  bookworm "$work/rust-root" "$DEBIAN_MIRROR"
# This machine's CA bundle, so that the build reaches crates.io the way this
# machine does (also through a TLS-inspecting proxy whose CA it trusts).
cp /etc/ssl/certs/ca-certificates.crt "$work/rust-root/etc/ssl/certs/ca-certificates.crt"
sysroot=$(rustc --print sysroot)
mkdir -p "$work/rust-root/usr/local/rust" "$work/rust-root/usr/local/cargo"
# The compiler, cargo and the standard library; no docs, no sources.
tar -C "$sysroot" --exclude=lib/rustlib/src --exclude=share -cf - bin lib \
  | tar -C "$work/rust-root/usr/local/rust" -xf -
ctr=$(bh from scratch)
mnt=$(bh mount "$ctr"); tar -C "$work/rust-root" -cf - . | tar -C "$mnt" -xf -; bh umount "$ctr" >/dev/null
bh config --env PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env CARGO_HOME=/usr/local/cargo --workingdir / "$ctr"
bh commit --quiet --rm "$ctr" "$RUST_BASE" >/dev/null
rm -rf "$work/rust-root"

echo "==> runtime base: glibc, libgcc, CA bundle, user 65532"
mmdebstrap --quiet --variant=extract --include=libc6,libgcc-s1 bookworm "$work/runtime-root" "$DEBIAN_MIRROR"
rt="$work/runtime-root"
mkdir -p "$rt/etc/ssl/certs" "$rt/tmp" "$rt/home/nonroot"
chmod 1777 "$rt/tmp"
cp /etc/ssl/certs/ca-certificates.crt "$rt/etc/ssl/certs/"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$rt/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$rt/etc/group"
chown 65532:65532 "$rt/home/nonroot"
ctr=$(bh from scratch)
mnt=$(bh mount "$ctr"); tar -C "$rt" -cf - . | tar -C "$mnt" -xf -; bh umount "$ctr" >/dev/null
bh config --user 65532:65532 --workingdir /home/nonroot "$ctr"
bh commit --quiet --rm "$ctr" "$RUNTIME_BASE" >/dev/null
rm -rf "$rt"

echo "==> buildah build of the Dockerfile (dependency layer, then authgate)"
start=$(date +%s)
bh build --isolation chroot --layers --pull-never \
  --build-arg RUST_IMAGE="$RUST_BASE" --build-arg RUNTIME_IMAGE="$RUNTIME_BASE" \
  -t "$IMAGE" -f Dockerfile .
echo "image built in $(( $(date +%s) - start )) s"

echo "==> the image"
config=$(bh inspect --type image --format '{{.OCIv1.Config.User}} {{.OCIv1.Config.Entrypoint}} {{.OCIv1.Config.WorkingDir}}' "$IMAGE")
echo "user, entrypoint, working directory: $config"
[ "$config" = "65532:65532 [/usr/local/bin/authgate serve] /var/lib/authgate" ] \
  || { echo "unexpected image config" >&2; exit 1; }
ctr=$(bh from "$IMAGE")
bh run --isolation chroot "$ctr" -- /usr/local/bin/authgate --version

# `serve` as the entrypoint runs it, on the quickstart config mounted where
# AUTHGATE_CONFIG points; chroot isolation shares this machine's network.
bh copy --chown 0:0 "$ctr" examples/quickstart/auth.yaml /etc/authgate/auth.yaml >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
bh run --isolation chroot "$ctr" -- /usr/local/bin/authgate serve \
  --http-addr "127.0.0.1:$port" --grpc-addr 127.0.0.1:0 > "$work/serve.log" 2>&1 &
server_pid=$!
ok=1
for _ in $(seq 100); do
  if curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then ok=0; break; fi
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.2
done
if [ "$ok" -ne 0 ]; then echo "authgate in the image did not answer /healthz:" >&2; cat "$work/serve.log" >&2; exit 1; fi
echo "GET /healthz: $(curl -fsS "http://127.0.0.1:$port/healthz")"
# The process inside the chroot runs as 65532, not root.
pid=$(pgrep -f "^/usr/local/bin/authgate serve --http-addr 127.0.0.1:$port" | head -n 1)
uid=$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")
echo "uid of authgate in the image: $uid"
[ "$uid" = 65532 ] || { echo "authgate runs as uid $uid, not 65532" >&2; exit 1; }
kill -TERM "$pid" || true
wait "$server_pid" 2>/dev/null || true
server_pid=
echo "image check passed"
