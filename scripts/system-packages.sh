#!/usr/bin/env bash
# Debian packages the real-reader tests need: a real pcscd with the vpcd virtual reader,
# libnfc's nfc-list, socat, the headers pyscard builds against, nginx (the package server
# and collection point the fleet tests serve through) and prometheus (for promtool).
set -euo pipefail
packages=(pcscd vsmartcard-vpcd libpcsclite-dev libnfc-bin libnfc-pn53x-examples pcsc-tools socat gcc nginx prometheus)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "== installing Debian packages: ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
