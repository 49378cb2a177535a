#!/bin/sh
# with-extra-ca.sh COMMAND [ARG...] - run COMMAND trusting an extra CA bundle when the build was
# given one (BuildKit secret `extra_ca`, mounted at /run/secrets/extra_ca), else run it as is.
#
# Owns: TLS trust for the image build's registry downloads (pip, uv) behind a TLS-inspecting
# proxy: `docker build --secret id=extra_ca,src=/path/to/ca.pem`. The bundle is a secret, not a
# build argument or a COPY, so it never lands in a layer and never changes a cache key.
set -eu
extra=/run/secrets/extra_ca
if [ ! -s "${extra}" ]; then
  exec "$@"
fi
bundle="$(mktemp)"
trap 'rm -f "${bundle}"' EXIT
# The base's own CAs (when it has any) plus the extra ones: adding trust never removes any.
cat /etc/ssl/certs/ca-certificates.crt "${extra}" >"${bundle}" 2>/dev/null || cat "${extra}" >"${bundle}"
SSL_CERT_FILE="${bundle}" PIP_CERT="${bundle}" REQUESTS_CA_BUNDLE="${bundle}" "$@"
