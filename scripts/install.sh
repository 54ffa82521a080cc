#!/usr/bin/env bash
# Installs everything img2music needs on a Debian machine: the programs that read, play and
# engrave ABC (from Debian), then a virtual environment in .venv with img2music and its dev tools.
set -euo pipefail
cd "$(dirname "$0")/.."

# strace is for the tests only: the directive filter's fuzz test watches abcm2ps and abc2midi
# with it.
SYSTEM_PACKAGES=(abcmidi abcm2ps fluidsynth timgm6mb-soundfont sox libsox-fmt-all chromium strace)
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}

missing=()
for package in "${SYSTEM_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$package")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]]; then
        apt_get=(apt-get)
    elif command -v sudo >/dev/null; then
        apt_get=(sudo apt-get)
    else
        echo "Please install these Debian packages as root: ${missing[*]}" >&2
        exit 1
    fi
    echo "Installing Debian packages: ${missing[*]}"
    "${apt_get[@]}" update -qq
    DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

if [[ ! -x .venv/bin/python ]]; then
    "$PYTHON" -m venv .venv
fi
pins=()
if [[ ${IMG2MUSIC_TORCH_PINS:-1} != 0 ]]; then
    pins=(--constraint scripts/constraints.txt)
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check "${pins[@]}" -e ".[dev]"
echo "img2music is installed: .venv/bin/img2music --help"
