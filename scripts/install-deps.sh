#!/usr/bin/env bash
# Installs the Debian 12 packages Cascade needs, only when something is missing.
#   scripts/install-deps.sh run    -> what `cascade run` needs (nothing beyond Rust today)
#   scripts/install-deps.sh test   -> FFmpeg, GStreamer, Chromium for the test suite
set -euo pipefail
mode=${1:-test}
packages=(pkg-config)
if [ "$mode" = test ]; then
  packages+=(ffmpeg chromium chromium-driver gstreamer1.0-tools gstreamer1.0-plugins-base
             gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "Installing Debian packages: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
