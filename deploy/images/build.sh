#!/usr/bin/env bash
# build.sh - build EmbArk's images on a machine that reaches the package registries but not
# Docker Hub: the local bases (make-base.sh), then any of
#   embark      ./Dockerfile on embark-local/python:3.11           -> ${EMBARK_IMAGE:-embark:local}
#   cassandra   deploy/images/server, devstack's Cassandra jars    -> embark-local/cassandra:5.0
#   kafka       deploy/images/server, devstack's Kafka jars        -> embark-local/kafka:3.9
#
#   deploy/images/build.sh embark cassandra kafka
#   EMBARK_BUILD_ARGS="MODELS=bundle MODEL_BUNDLE=deploy/bundles/X.tar" deploy/images/build.sh embark
#
# Owns: the build inputs only this kind of machine needs: --network host (builds reach the
# registries like the host does) and the host's CA bundle as the `extra_ca` build secret
# (EXTRA_CA=<file>, default: the bundle pip is configured with, else the system bundle; EXTRA_CA=
# turns it off). The jars are fetched by devstack.sh (Maven Central, cached in .devstack/) and
# staged with devstack/ into a small context. Prints "<image> built in <s> s" per image.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
readonly REPO
readonly DOCKER="${DOCKER:-/usr/bin/docker}"
readonly EMBARK_IMAGE="${EMBARK_IMAGE:-embark:local}"
readonly CASSANDRA_IMAGE="${CASSANDRA_IMAGE:-embark-local/cassandra:5.0}"
readonly KAFKA_IMAGE="${KAFKA_IMAGE:-embark-local/kafka:3.9}"
export DOCKER_BUILDKIT=1

log() { printf 'build: %s\n' "$*" >&2; }
die() { printf 'build: error: %s\n' "$*" >&2; exit 1; }

extra_ca() {
  if [[ -n "${EXTRA_CA+set}" ]]; then printf '%s' "${EXTRA_CA}"; return; fi
  local pip_cert=""
  pip_cert="$(python3 -m pip config get global.cert 2>/dev/null || true)"
  for f in "${PIP_CERT:-}" "${pip_cert}" "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt; do
    [[ -n "${f}" && -s "${f}" ]] && { printf '%s' "${f}"; return; }
  done
}

secret_args() {
  local ca
  ca="$(extra_ca)"
  [[ -n "${ca}" ]] && printf '%s\n' --secret "id=extra_ca,src=${ca}"
  return 0
}

build_embark() {
  local t0=${SECONDS} secrets=() args=()
  mapfile -t secrets < <(secret_args)
  # EMBARK_BUILD_ARGS="NAME=VALUE ...": more build arguments (e.g. MODELS=bundle MODEL_BUNDLE=...).
  for arg in ${EMBARK_BUILD_ARGS:-}; do args+=(--build-arg "${arg}"); done
  "${DOCKER}" build --network host "${secrets[@]}" "${args[@]}" \
    --build-arg PYTHON_IMAGE=embark-local/python:3.11 \
    -t "${EMBARK_IMAGE}" "${REPO}" >&2
  log "${EMBARK_IMAGE} built in $((SECONDS - t0)) s"
}

build_server() { # build_server cassandra|kafka IMAGE
  local server="$1" image="$2" t0=${SECONDS}
  DEVSTACK_DIR="${REPO}/.devstack" "${REPO}/devstack/devstack.sh" fetch "${server}" >&2
  ( # a subshell, so the staging directory goes whatever happens
    ctx="$(mktemp -d)"
    trap 'rm -rf "${ctx}"' EXIT
    mkdir -p "${ctx}/devstack"
    cp "${REPO}/devstack/devstack.sh" "${ctx}/devstack/"
    cp -r "${REPO}/devstack/${server}" "${ctx}/devstack/"
    # Hard links when the file system allows: the context is ~50-70 MB of jars.
    cp -al "${REPO}/.devstack/${server}/lib" "${ctx}/lib" 2>/dev/null \
      || cp -a "${REPO}/.devstack/${server}/lib" "${ctx}/lib"
    cp "${REPO}"/deploy/images/server/{Dockerfile,entrypoint.sh,kafka-broker-api-versions.sh} "${ctx}/"
    "${DOCKER}" build --network host --build-arg "SERVER=${server}" -t "${image}" "${ctx}" >&2
  )
  log "${image} built in $((SECONDS - t0)) s"
}

main() {
  [[ $# -gt 0 ]] || set -- embark
  "${DOCKER}" info >/dev/null 2>&1 || die "no Docker engine answers (${DOCKER} info)"
  local need_jre=0
  for what in "$@"; do [[ "${what}" == cassandra || "${what}" == kafka ]] && need_jre=1; done
  if [[ ${need_jre} == 1 ]]; then "${REPO}/deploy/images/make-base.sh"; else "${REPO}/deploy/images/make-base.sh" python; fi
  for what in "$@"; do
    case "${what}" in
      embark) build_embark ;;
      cassandra) build_server cassandra "${CASSANDRA_IMAGE}" ;;
      kafka) build_server kafka "${KAFKA_IMAGE}" ;;
      *) die "unknown image: ${what} (embark, cassandra, kafka)" ;;
    esac
  done
}

main "$@"
