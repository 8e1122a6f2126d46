#!/bin/sh
# Installs the npm-packaged peers of SegNode's test suite into the git-ignored folder .test-peers/ of the
# repository (run from any directory; idempotent, a no-op when the pinned versions are already there):
#   .test-peers/ohif/dist/  the prebuilt OHIF Viewer (npm package @ohif/app), served as static files by the
#                           viewer test in tests/e2e/ against Orthanc's DICOMweb plugin.
# Only the package's own tarball is fetched (npm pack: the registry's published, checksummed file); the
# prebuilt dist/ needs none of the package's build dependencies.
set -eu
OHIF_VERSION="3.13.2"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PEERS="$ROOT/.test-peers"
OHIF="$PEERS/ohif"
if [ -f "$OHIF/VERSION" ] && [ "$(cat "$OHIF/VERSION")" = "$OHIF_VERSION" ] && [ -f "$OHIF/dist/index.html" ]; then
    exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm
fi
mkdir -p "$PEERS"
WORK="$(mktemp -d "$PEERS/.ohif-XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
(cd "$WORK" && npm pack --silent "@ohif/app@$OHIF_VERSION" >/dev/null)
tar -xzf "$WORK"/ohif-app-"$OHIF_VERSION".tgz -C "$WORK" package/dist package/LICENSE package/package.json
[ -f "$WORK/package/dist/index.html" ] || { echo "install-test-peers: @ohif/app $OHIF_VERSION has no dist/index.html" >&2; exit 1; }
echo "$OHIF_VERSION" > "$WORK/package/VERSION"
rm -rf "$OHIF"
mv "$WORK/package" "$OHIF"
