#!/usr/bin/env bash
# make-base.sh - build the local base images that stand in for Docker Hub's, from Debian packages.
#
# Owns: the images every locally built EmbArk image starts from, for machines that reach the
# package registries but not Docker Hub (CI here, air-gapped builders):
#   embark-local/debian:bookworm   debootstrap --variant=minbase bookworm, imported with `docker import`
#   embark-local/python:3.11       + python3.11, venv, ca-certificates (what the Dockerfile needs of
#                                  python:3.11-slim-bookworm)
#   embark-local/jre:17            + openjdk-17-jre-headless (deploy/images/{cassandra,kafka})
# Each is made only when missing (BASE_REBUILD=1 forces). The Debian mirror is the one this
# machine's apt uses (BASE_MIRROR overrides); the build reaches it with --network host.
#
#   deploy/images/make-base.sh            # all three
#   deploy/images/make-base.sh python     # up to embark-local/python:3.11
set -euo pipefail

readonly DOCKER="${DOCKER:-/usr/bin/docker}"
readonly SUITE="${BASE_SUITE:-bookworm}"
readonly DEBIAN_IMAGE="embark-local/debian:${SUITE}"
readonly PYTHON_IMAGE="embark-local/python:3.11"
readonly JRE_IMAGE="embark-local/jre:17"
export DOCKER_BUILDKIT=1

log() { printf 'make-base: %s\n' "$*" >&2; }
die() { printf 'make-base: error: %s\n' "$*" >&2; exit 1; }

have() { [[ "${BASE_REBUILD:-0}" != 1 ]] && "${DOCKER}" image inspect "$1" >/dev/null 2>&1; }

# The first http(s) Debian mirror apt is configured with (deb822 or one-line sources).
apt_mirror() {
  if [[ -n "${BASE_MIRROR:-}" ]]; then printf '%s\n' "${BASE_MIRROR}"; return; fi
  local m
  m="$(grep -hoE '^URIs: *https?://[^ ]+' /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | grep -v -- '-security' | head -n 1 | sed -E 's/^URIs: *//')" || true
  if [[ -z "${m}" ]]; then
    m="$(grep -hoE '^deb +https?://[^ ]+' /etc/apt/sources.list 2>/dev/null \
          | grep -v -- '-security' | head -n 1 | sed -E 's/^deb +//')" || true
  fi
  [[ -n "${m}" ]] || die "no Debian mirror found in /etc/apt; set BASE_MIRROR"
  printf '%s\n' "${m}"
}

make_debian() {
  have "${DEBIAN_IMAGE}" && { log "${DEBIAN_IMAGE} present"; return; }
  command -v debootstrap >/dev/null || die "debootstrap not installed (apt-get install debootstrap)"
  local t0=${SECONDS} mirror
  mirror="$(apt_mirror)"
  ( # a subshell, so the root file system goes whatever happens
    root="$(mktemp -d)"
    trap 'rm -rf "${root}" "${root}.log"' EXIT
    log "debootstrap ${SUITE} from ${mirror} ..."
    debootstrap --variant=minbase "${SUITE}" "${root}" "${mirror}" >"${root}.log" 2>&1 \
      || { tail -n 30 "${root}.log" >&2; die "debootstrap failed"; }
    # No apt lists or caches in the image; later layers run apt-get update themselves.
    rm -rf "${root}"/var/lib/apt/lists/* "${root}"/var/cache/apt/*.bin \
      "${root}"/var/cache/apt/archives/*.deb
    tar -C "${root}" -c . | "${DOCKER}" import \
      --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' - "${DEBIAN_IMAGE}" >/dev/null
  )
  log "${DEBIAN_IMAGE} made in $((SECONDS - t0)) s"
}

# build_on IMAGE PACKAGES...: one apt layer on the Debian base.
build_on() {
  local image="$1"; shift
  have "${image}" && { log "${image} present"; return; }
  local t0=${SECONDS}
  "${DOCKER}" build --network host -t "${image}" --build-arg "PACKAGES=$*" \
    --build-arg "BASE=${DEBIAN_IMAGE}" - >/dev/null <<'DOCKERFILE'
ARG BASE
FROM ${BASE}
ARG PACKAGES
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${PACKAGES} \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
DOCKERFILE
  log "${image} made in $((SECONDS - t0)) s"
}

main() {
  "${DOCKER}" info >/dev/null 2>&1 || die "no Docker engine answers (${DOCKER} info)"
  make_debian
  # passwd: useradd for the image's service user; python3-venv: ensurepip for installing uv.
  build_on "${PYTHON_IMAGE}" python3.11 python3.11-venv ca-certificates passwd
  [[ "${1:-all}" == python ]] && return
  build_on "${JRE_IMAGE}" openjdk-17-jre-headless ca-certificates procps
}

main "$@"
