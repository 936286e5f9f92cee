#!/usr/bin/env bash
# Build the image the Docker tests run (no registry is needed): Debian's statically linked
# busybox in an otherwise empty root file system, imported with `docker import`.
# Usage: scripts/test-image.sh [IMAGE]   (default: $AUDSYNC_TEST_IMAGE or audsync-test/busybox:1)
set -euo pipefail
IMAGE=${1:-${AUDSYNC_TEST_IMAGE:-audsync-test/busybox:1}}

if ! docker version >/dev/null 2>&1; then
  echo "error: the Docker engine is unreachable (DOCKER_HOST=${DOCKER_HOST:-unix:///var/run/docker.sock})" >&2
  exit 1
fi
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "test image $IMAGE present"
  exit 0
fi
BB=/bin/busybox
if ! file -L "$BB" 2>/dev/null | grep -q 'statically linked'; then
  echo "installing busybox-static (Debian) for the test image" >&2
  if ! apt-get install -y busybox-static >/dev/null 2>&1; then
    apt-get update >/dev/null && apt-get install -y busybox-static >/dev/null
  fi
fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/tmp" "$root/data" "$root/etc" "$root/www"
cp "$BB" "$root/bin/busybox"
for app in $("$root/bin/busybox" --list); do
  [ "$app" = busybox ] || ln -s busybox "$root/bin/$app"
done
echo 'root:x:0:0:root:/:/bin/sh' >"$root/etc/passwd"
echo 'root:x:0:' >"$root/etc/group"
echo ok >"$root/www/index.html"
tar -C "$root" -c . | docker import -c 'ENV PATH=/bin' -c 'CMD ["/bin/sh"]' - "$IMAGE" >/dev/null
echo "built test image $IMAGE"
