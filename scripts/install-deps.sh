#!/usr/bin/env bash
# Installs the Debian 12 packages Cascade needs, only when something is missing.
#   scripts/install-deps.sh run    -> what building and running `cascade` needs: GStreamer's headers
#                                     (the transcoder links it) and plugins (decoders, x264, Opus,
#                                     AAC), the trusted roots RTMPS restreams check against, and
#                                     hls.js (npm) for the watch page's LL-HLS fallback
#   scripts/install-deps.sh test   -> FFmpeg, GStreamer (and its RTSP server, the tests' camera), stunnel (RTMPS), Chromium, OpenSSL, curl, iproute2, nftables, promtool (prometheus: the alert rules' tests; its service is not started by the tests) and
#                                     aiortc and m3u8 (PyPI, in .venv-interop), and CongoDB (npm, in .deps/congodb:
#                                     a MongoDB-wire server in TypeScript, the history tests' MongoDB) for the test suite
set -euo pipefail
mode=${1:-test}
packages=(pkg-config ca-certificates curl openssl libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
          gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
          gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav)
if [ "$mode" = test ]; then
  packages+=(ffmpeg chromium chromium-driver gstreamer1.0-rtsp gir1.2-gst-rtsp-server-1.0 python3-gi stunnel4
             openssl curl iproute2 nftables python3 python3-venv prometheus)
  # Node.js runs CongoDB below; Debian's (18) does, and so does a newer one already there.
  command -v node >/dev/null && command -v npm >/dev/null || packages+=(nodejs npm)
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

# fetch_npm PACKAGE VERSION INTEGRITY FILE: downloads a pinned release from the npm registry to
# FILE and checks it against the registry's integrity hash (exits on a mismatch).
fetch_npm() {
  local package=$1 version=$2 integrity=$3 file=$4
  echo "Fetching $package $version from the npm registry"
  curl -fsSL "https://registry.npmjs.org/$package/-/${package#*/}-$version.tgz" -o "$file"
  local got
  got="sha512-$(openssl dgst -sha512 -binary "$file" | base64 -w0)"
  if [ "$got" != "$integrity" ]; then
    echo "$package $version does not match its npm integrity hash; not installed" >&2
    rm -f "$file"
    exit 1
  fi
}

# hls.js, the watch page's LL-HLS player where WebRTC cannot connect: the pinned npm release,
# checked against the registry's integrity hash, kept out of the repository (.deps/) and
# served by the node at /vendor/hls.min.js with its licence.
hls_version=1.7.4
hls_integrity=sha512-3GlxGdPvT2YHvQYOt+yOzT/DEior/qJVNIylHA77kgeoBTdQQqi70GwefNEUmHQeNGyjC8U62+bruqW/Tpm+tg==
hls_dir="$(dirname "$0")/../.deps/hls.js"
if [ "$(cat "$hls_dir/VERSION" 2>/dev/null)" != "$hls_version" ]; then
  mkdir -p "$hls_dir"
  tarball="$hls_dir/hls.js-$hls_version.tgz"
  fetch_npm hls.js "$hls_version" "$hls_integrity" "$tarball"
  tar -xzf "$tarball" -C "$hls_dir" --strip-components=2 package/dist/hls.min.js
  tar -xzf "$tarball" -C "$hls_dir" --strip-components=1 package/LICENSE
  rm -f "$tarball"
  echo "$hls_version" > "$hls_dir/VERSION"
fi

# aiortc, the non-Rust WebRTC peer of the interop tests, m3u8, the independent LL-HLS
# playlist parser of the playlist tests, and schemathesis, the API contract's property-based
# tester, in their own virtual environment.
if [ "$mode" = test ]; then
  venv="$(dirname "$0")/../.venv-interop"
  if ! "$venv/bin/python" -c "import aiortc, m3u8, schemathesis" 2>/dev/null; then
    echo "Installing aiortc, m3u8 and schemathesis into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "aiortc==1.16.0" "m3u8==6.0.0" \
      "schemathesis==4.32.5"
  fi
fi

# CongoDB, the MongoDB-wire server the history tests write to (MongoDB itself is not in Debian
# and its downloads are not reachable here): the pinned npm release of @push.rocks/smartmongo,
# checked against its integrity hash, and the few packages its CongoDB part imports (the rest
# of that package, a MongoDB downloader, is not installed). Started by the tests through
# scripts/mongodb-test-server.mjs.
if [ "$mode" = test ]; then
  congo_version=2.2.0
  congo_integrity=sha512-ovVCNoJ3D0aBuKtoKaQWWQKvBngaGJq9fAPQigzji1EHsS1XyGpXWCpe5nq/ptGvBROOcpqZcOFEGAcrnb+OjA==
  congo_dir="$(dirname "$0")/../.deps/congodb"
  if [ "$(cat "$congo_dir/VERSION" 2>/dev/null)" != "$congo_version" ]; then
    rm -rf "$congo_dir"
    mkdir -p "$congo_dir/smartmongo"
    tarball="$congo_dir/smartmongo.tgz"
    fetch_npm @push.rocks/smartmongo "$congo_version" "$congo_integrity" "$tarball"
    tar -xzf "$tarball" -C "$congo_dir/smartmongo" --strip-components=1
    rm -f "$tarball"
    # Beside the package, not inside it: npm would prune what it did not install itself.
    echo '{"name": "cascade-congodb", "private": true}' > "$congo_dir/package.json"
    (cd "$congo_dir" && npm install --ignore-scripts --no-audit --no-fund --loglevel=error \
      bson@6 mingo@7 @push.rocks/smartpromise@4 @push.rocks/smartrx@3 @push.rocks/smartpath@5 @push.rocks/smartfs@1)
    echo "$congo_version" > "$congo_dir/VERSION"
  fi
fi
