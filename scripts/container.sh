#!/usr/bin/env bash
# Builds the relayer container image (default tag relayers:latest) from ./Dockerfile.
#
#   bash scripts/container.sh                 # base: $BASE_IMAGE, or the Dockerfile's python:3.11-slim
#   bash scripts/container.sh --local-base    # base: a Debian bookworm bootstrapped here (debootstrap)
#
# Engine: `docker build` when a docker engine answers (`docker info`), else buildah
# (`buildah --storage-driver vfs bud --isolation chroot --format docker`), which needs no daemon.
# Force one with CONTAINER_ENGINE=docker|buildah.
#
# --local-base needs no image registry: it runs
#   debootstrap --variant=minbase --include=python3,python3-venv bookworm DIR MIRROR
# (MIRROR is read from this host's apt sources, or $DEBIAN_MIRROR), keeps the result as a tarball
# in out/cache/container/ for later runs, imports it as localhost/relayer-base:bookworm and builds
# with --build-arg BASE_IMAGE=localhost/relayer-base:bookworm. The tarball and the imported image
# are reused when present; --refresh-base makes them anew.
#
# With buildah, the host's CA bundle is bind-mounted over /etc/ssl/certs/ca-certificates.crt for
# the RUN steps only (pip verifies PyPI with it), so a host behind a TLS-intercepting proxy can
# build; the image keeps the base's own bundle.
#
# Environment:
#   IMAGE                  tag to build (relayers:latest)
#   BASE_IMAGE             base image for a build without --local-base
#   LOCAL_BASE_IMAGE       name for the imported local base (localhost/relayer-base:bookworm)
#   DEBIAN_SUITE           suite for --local-base (bookworm: its python3 is 3.11)
#   DEBIAN_MIRROR          Debian mirror for debootstrap (default: from /etc/apt/sources*)
#   CONTAINER_ENGINE       docker | buildah | auto (auto)
#   BUILDAH_STORAGE_DRIVER storage driver for buildah (vfs: works anywhere, inside containers too)
#   CONTAINER_CACHE_DIR    where the bootstrapped base is kept (out/cache/container)
#   HOST_CA_BUNDLE         CA bundle to mount for the build (default: $PIP_CERT, $SSL_CERT_FILE or
#                          /etc/ssl/certs/ca-certificates.crt, whichever exists first)
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-relayers:latest}
LOCAL_BASE_IMAGE=${LOCAL_BASE_IMAGE:-localhost/relayer-base:bookworm}
DEBIAN_SUITE=${DEBIAN_SUITE:-bookworm}
CONTAINER_ENGINE=${CONTAINER_ENGINE:-auto}
BUILDAH_STORAGE_DRIVER=${BUILDAH_STORAGE_DRIVER:-vfs}
CONTAINER_CACHE_DIR=${CONTAINER_CACHE_DIR:-out/cache/container}
BASE_PACKAGES=python3,python3-venv

local_base=0
refresh_base=0
no_cache=0

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
    cat <<'EOF'
Options:
  --local-base     build on a locally debootstrapped Debian base instead of $BASE_IMAGE
  --refresh-base   with --local-base: bootstrap and import the base again even if cached
  --no-cache       build every step again (docker; buildah builds afresh anyway unless BUILDAH_LAYERS=true)
  -h, --help       this text
EOF
}

while [ $# -gt 0 ]; do
    case $1 in
        --local-base) local_base=1 ;;
        --refresh-base) refresh_base=1 ;;
        --no-cache) no_cache=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "container: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

log() { echo "container: $*"; }
die() { echo "container: error: $*" >&2; exit 1; }

start=$SECONDS

# ---- engine ----------------------------------------------------------------------------------
docker_works() {
    command -v docker >/dev/null 2>&1 && timeout 30 docker info >/dev/null 2>&1
}

case $CONTAINER_ENGINE in
    auto)
        if docker_works; then
            engine=docker
        elif command -v buildah >/dev/null 2>&1; then
            engine=buildah
            if command -v docker >/dev/null 2>&1; then
                log "docker CLI found but no docker engine answers (docker info failed): using buildah"
            fi
        else
            die "no container engine: no working docker engine (docker info failed or docker missing) and no buildah. Install buildah: apt-get install buildah$([ "$local_base" = 1 ] && echo ' debootstrap')"
        fi
        ;;
    docker)
        docker_works || die "CONTAINER_ENGINE=docker but 'docker info' fails: is the docker engine running?"
        engine=docker
        ;;
    buildah)
        command -v buildah >/dev/null 2>&1 || die "CONTAINER_ENGINE=buildah but buildah is missing. Install it: apt-get install buildah"
        engine=buildah
        ;;
    *) die "CONTAINER_ENGINE must be docker, buildah or auto, not '$CONTAINER_ENGINE'" ;;
esac

# buildah without a base named: no image registry may be reachable (our machines reach only package
# registries), so build on a Debian base bootstrapped here rather than pulling python:3.11-slim.
if [ "$engine" = buildah ] && [ -z "${BASE_IMAGE:-}" ] && [ "$local_base" = 0 ]; then
    log "buildah and no BASE_IMAGE given: using a locally bootstrapped Debian base (--local-base)"
    local_base=1
fi

buildah_() { buildah --storage-driver "$BUILDAH_STORAGE_DRIVER" "$@"; }

image_id() {  # image_id IMAGE: its full ID, or nothing
    if [ "$engine" = docker ]; then
        docker image inspect --format '{{.Id}}' "$1" 2>/dev/null || true
    else
        buildah_ inspect --type image --format '{{.FromImageID}}' "$1" 2>/dev/null || true
    fi
}

# After IMAGE was built or imported again, removes the image it replaced (now untagged), so
# repeated builds do not pile up images in storage.
drop_replaced_image() {  # drop_replaced_image OLD_ID IMAGE
    local old=$1 new
    new=$(image_id "$2")
    [ -n "$old" ] && [ "${old#sha256:}" != "${new#sha256:}" ] || return 0
    if [ "$engine" = docker ]; then
        docker image rm "$old" >/dev/null 2>&1 || true
    else
        buildah_ rmi "${old#sha256:}" >/dev/null 2>&1 || true
    fi
}

image_exists() {
    if [ "$engine" = docker ]; then
        docker image inspect "$1" >/dev/null 2>&1
    else
        buildah_ inspect --type image "$1" >/dev/null 2>&1
    fi
}

# ---- local base ------------------------------------------------------------------------------
# The first Debian archive URI in this host's apt sources (deb822 *.sources or one-line *.list),
# skipping security archives (they hold no full suite).
host_debian_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk 'tolower($1) == "uris:" { for (i = 2; i <= NF; i++) print $i }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        # deb [options] URI suite components
        awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/ && $i !~ /=/) { print $i; break } }' "$f"
    done
}

pick_mirror() {
    if [ -n "${DEBIAN_MIRROR:-}" ]; then
        echo "$DEBIAN_MIRROR"
        return
    fi
    host_debian_mirror | grep -E '^(https?|file)://' | grep -v -E 'security|ubuntu' | head -n 1 || true
}

# Unmounts anything debootstrap left mounted under $1 (deepest first), so removing it is safe.
umount_under() {
    local dir mnt
    dir=$(readlink -f "$1")
    awk -v d="$dir/" 'index($2 "/", d) == 1 { print $2 }' /proc/mounts | sort -r | while read -r mnt; do
        umount -l "$mnt" || true
    done
}

bootstrap_base_tarball() {  # bootstrap_base_tarball TARBALL
    local tarball=$1 rootfs mirror t0
    command -v debootstrap >/dev/null 2>&1 || die "--local-base needs debootstrap. Install it: apt-get install debootstrap"
    [ "$(id -u)" = 0 ] || die "--local-base needs root to run debootstrap (or an existing $tarball)"
    mirror=$(pick_mirror)
    [ -n "$mirror" ] || die "no Debian mirror found in /etc/apt/sources.list{,.d/*}; set DEBIAN_MIRROR"
    rootfs="$CONTAINER_CACHE_DIR/rootfs.partial"
    if [ -e "$rootfs" ]; then
        umount_under "$rootfs"
        rm -rf --one-file-system "$rootfs"
    fi
    mkdir -p "$rootfs"
    log "bootstrapping Debian $DEBIAN_SUITE (minbase + $BASE_PACKAGES) with debootstrap from $mirror (about a minute)"
    t0=$SECONDS
    if ! debootstrap --variant=minbase --include="$BASE_PACKAGES" "$DEBIAN_SUITE" "$rootfs" "$mirror" \
        >"$CONTAINER_CACHE_DIR/debootstrap.log" 2>&1; then
        tail -n 20 "$CONTAINER_CACHE_DIR/debootstrap.log" >&2
        umount_under "$rootfs"
        die "debootstrap failed; full log in $CONTAINER_CACHE_DIR/debootstrap.log"
    fi
    umount_under "$rootfs"
    # The image build runs apt-get update itself: drop the package lists and caches.
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
        "$rootfs"/var/log/bootstrap.log "$rootfs"/debootstrap
    log "debootstrap done in $((SECONDS - t0))s; packing $tarball"
    tar -C "$rootfs" --numeric-owner --xattrs -cf "$tarball.partial" .
    mv -f "$tarball.partial" "$tarball"
    rm -rf --one-file-system "$rootfs"
}

import_base() {  # import_base TARBALL IMAGE
    local tarball=$1 image=$2 path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    log "importing $tarball as $image ($engine)"
    if [ "$engine" = docker ]; then
        docker import --change "ENV PATH=$path" --change "ENV LANG=C.UTF-8" --change 'CMD ["/bin/bash"]' \
            "$tarball" "$image" >/dev/null
        return
    fi
    local ctr
    ctr=$(buildah_ from --pull=never scratch)
    # shellcheck disable=SC2064  # expand $ctr now
    trap "buildah --storage-driver '$BUILDAH_STORAGE_DRIVER' rm '$ctr' >/dev/null 2>&1 || true" EXIT
    buildah_ add "$ctr" "$tarball" / >/dev/null
    buildah_ config --env PATH="$path" --env LANG=C.UTF-8 --cmd '["/bin/bash"]' \
        --label org.opencontainers.image.description="Debian $DEBIAN_SUITE minbase + $BASE_PACKAGES (debootstrap)" \
        "$ctr"
    buildah_ commit --quiet --rm --format docker "$ctr" "$image" >/dev/null
    trap - EXIT
}

build_args=()
if [ "$local_base" = 1 ]; then
    mkdir -p "$CONTAINER_CACHE_DIR"
    tarball="$CONTAINER_CACHE_DIR/debian-$DEBIAN_SUITE-minbase.tar"
    if [ "$refresh_base" = 1 ]; then
        rm -f "$tarball"
    fi
    if [ "$refresh_base" = 0 ] && image_exists "$LOCAL_BASE_IMAGE"; then
        log "reusing base image $LOCAL_BASE_IMAGE (--refresh-base to make it anew)"
    else
        if [ -f "$tarball" ]; then
            log "reusing cached base $tarball"
        else
            bootstrap_base_tarball "$tarball"
        fi
        old_base=$(image_id "$LOCAL_BASE_IMAGE")
        import_base "$tarball" "$LOCAL_BASE_IMAGE"
        drop_replaced_image "$old_base" "$LOCAL_BASE_IMAGE"
    fi
    build_args+=(--build-arg "BASE_IMAGE=$LOCAL_BASE_IMAGE")
    base_desc=$LOCAL_BASE_IMAGE
elif [ -n "${BASE_IMAGE:-}" ]; then
    build_args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
    base_desc=$BASE_IMAGE
else
    base_desc="the Dockerfile default ($(sed -n 's/^ARG BASE_IMAGE=//p' Dockerfile))"
fi

# ---- build -----------------------------------------------------------------------------------
[ -f requirements/runtime.lock ] || die "requirements/runtime.lock is missing (make lock)"

log "building $IMAGE with $engine on $base_desc"
t0=$SECONDS
if [ "$engine" = docker ]; then
    [ "$no_cache" = 1 ] && build_args+=(--no-cache)
    docker build -t "$IMAGE" "${build_args[@]}" .
else
    ca=${HOST_CA_BUNDLE:-}
    if [ -z "$ca" ]; then
        for c in "${PIP_CERT:-}" "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt; do
            if [ -n "$c" ] && [ -f "$c" ]; then ca=$c; break; fi
        done
    fi
    if [ -n "$ca" ]; then
        log "mounting host CA bundle $ca for the build's RUN steps"
        build_args+=(--volume "$(readlink -f "$ca"):/etc/ssl/certs/ca-certificates.crt:ro")
    fi
    [ "$no_cache" = 1 ] && build_args+=(--no-cache)
    old_id=$(image_id "$IMAGE")
    # --format docker keeps HEALTHCHECK (the OCI format has no field for it).
    # --pull=false: pull the base only when it is not in local storage.
    # No --layers (unless BUILDAH_LAYERS=true): with the vfs driver every cached step is a full copy
    # of the root filesystem, which made a rebuild slower (~130s) than building afresh (~60s).
    buildah_ bud --isolation chroot --format docker --pull=false -f Dockerfile -t "$IMAGE" \
        "${build_args[@]}" .
    drop_replaced_image "$old_id" "$IMAGE"
fi
log "built $IMAGE in $((SECONDS - t0))s (total $((SECONDS - start))s)"
if [ "$engine" = docker ]; then
    docker image ls "$IMAGE"
else
    buildah_ images "$IMAGE"
fi
