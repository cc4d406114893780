#!/usr/bin/env bash
# Installs the Debian 12 packages Cascade needs, only when something is missing.
#   scripts/install-deps.sh run    -> what building and running `cascade` needs: GStreamer's headers
#                                     (the transcoder links it) and plugins (decoders, x264, Opus,
#                                     AAC), the trusted roots RTMPS restreams check against, and
#                                     hls.js (npm) for the watch page's LL-HLS fallback
#   scripts/install-deps.sh test   -> FFmpeg, GStreamer (and its RTSP server, the tests' camera), stunnel (RTMPS), Chromium, OpenSSL, curl, iproute2, nftables, promtool (prometheus: the alert rules' tests; its service is not started by the tests) and
#                                     aiortc and m3u8 (PyPI, in .venv-interop) for the test suite
set -euo pipefail
mode=${1:-test}
packages=(pkg-config ca-certificates curl openssl libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
          gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
          gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav)
if [ "$mode" = test ]; then
  packages+=(ffmpeg chromium chromium-driver gstreamer1.0-rtsp gir1.2-gst-rtsp-server-1.0 python3-gi stunnel4
             openssl curl iproute2 nftables python3 python3-venv prometheus)
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

# hls.js, the watch page's LL-HLS player where WebRTC cannot connect: the pinned npm release,
# checked against the registry's integrity hash, kept out of the repository (.deps/) and
# served by the node at /vendor/hls.min.js with its licence.
hls_version=1.7.4
hls_integrity=sha512-3GlxGdPvT2YHvQYOt+yOzT/DEior/qJVNIylHA77kgeoBTdQQqi70GwefNEUmHQeNGyjC8U62+bruqW/Tpm+tg==
hls_dir="$(dirname "$0")/../.deps/hls.js"
if [ "$(cat "$hls_dir/VERSION" 2>/dev/null)" != "$hls_version" ]; then
  echo "Fetching hls.js $hls_version from the npm registry"
  mkdir -p "$hls_dir"
  tarball="$hls_dir/hls.js-$hls_version.tgz"
  curl -fsSL "https://registry.npmjs.org/hls.js/-/hls.js-$hls_version.tgz" -o "$tarball"
  got="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
  if [ "$got" != "$hls_integrity" ]; then
    echo "hls.js $hls_version does not match its npm integrity hash; not installed" >&2
    rm -f "$tarball"
    exit 1
  fi
  tar -xzf "$tarball" -C "$hls_dir" --strip-components=2 package/dist/hls.min.js
  tar -xzf "$tarball" -C "$hls_dir" --strip-components=1 package/LICENSE
  rm -f "$tarball"
  echo "$hls_version" > "$hls_dir/VERSION"
fi

# aiortc, the non-Rust WebRTC peer of the interop tests, and m3u8, the independent LL-HLS
# playlist parser of the playlist tests, in their own virtual environment.
if [ "$mode" = test ]; then
  venv="$(dirname "$0")/../.venv-interop"
  if ! "$venv/bin/python" -c "import aiortc, m3u8" 2>/dev/null; then
    echo "Installing aiortc and m3u8 into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "aiortc==1.16.0" "m3u8==6.0.0"
  fi
fi
