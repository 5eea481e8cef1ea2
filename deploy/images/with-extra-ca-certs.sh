#!/bin/sh
# Runs one build step (pip, a weight download) trusting the CA certificates in EXTRA_CA_CERTS (PEM
# text, a build argument; empty by default) besides the system's: behind a TLS-inspecting proxy,
# pip and the downloads fail without the proxy's CA. The bundle is a temporary file removed when
# the step ends, so no image carries the certificates (the build argument's value does show in
# `docker history` of the image whose step used it: certificates are public, not secrets).
#
#   with-extra-ca-certs.sh pip install -r requirements.txt
set -eu
if [ -z "${EXTRA_CA_CERTS:-}" ]; then
  exec "$@"
fi
case $EXTRA_CA_CERTS in
  *"-----BEGIN CERTIFICATE-----"*) ;;
  *) echo "EXTRA_CA_CERTS holds no PEM certificate (-----BEGIN CERTIFICATE-----)" >&2; exit 2 ;;
esac
bundle=$(mktemp)
trap 'rm -f "$bundle"' EXIT
cat /etc/ssl/certs/ca-certificates.crt > "$bundle"
printf '%s\n' "$EXTRA_CA_CERTS" >> "$bundle"
# pip, Python's ssl (urllib) and requests each read their own variable.
PIP_CERT=$bundle SSL_CERT_FILE=$bundle REQUESTS_CA_BUNDLE=$bundle "$@"
