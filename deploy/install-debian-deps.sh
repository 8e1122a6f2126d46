#!/bin/sh
# Installs the Debian/Ubuntu packages SegNode's test suite talks to as real peers:
# dcmtk (storescu, echoscu, storescp, dcmdump), orthanc (a real PACS), dicom3tools (dciodvfy), dcm2niix,
# postgresql (the audit database on PostgreSQL; the test starts its own server on a free loopback port),
# chromium + chromium-driver (a real browser for the dashboard and viewer tests, driven by selenium),
# orthanc-dicomweb (Orthanc's DICOMweb plugin, read by the OHIF Viewer in the viewer test), tesseract-ocr
# (reads back the words burned into the overlay images), stress-ng (background CPU load, to check that the
# tests do not depend on timing: stress-ng --cpu 1), redis-server (the cluster's broker; the cluster tests
# start their own server on a free loopback port), g++ and python3-dev (torch.compile builds the C++ kernels of
# the networks compiled for the CPU). Then the
# npm-packaged peers (deploy/install-test-peers.sh: the prebuilt OHIF Viewer).
set -eu
PACKAGES="python3-venv dcmtk orthanc dicom3tools dcm2niix postgresql chromium chromium-driver orthanc-dicomweb tesseract-ocr tesseract-ocr-eng stress-ng redis-server g++ python3-dev"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi
# Orthanc's Debian package starts a system service on port 4242/8042; the tests start their own instances
# on ephemeral loopback ports and do not need it.
sh "$(dirname "$0")/install-test-peers.sh"
