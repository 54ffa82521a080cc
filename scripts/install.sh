#!/usr/bin/env bash
# Installs everything img2music needs on a Debian machine: the programs that read, play and
# engrave ABC (from Debian), a virtual environment in .venv with img2music and its dev tools, and
# abcjs (from npm) for the web page's score that follows the audio.
set -euo pipefail
cd "$(dirname "$0")/.."

# strace is for the tests only: the directive filter's fuzz test watches abcm2ps and abc2midi
# with it.
SYSTEM_PACKAGES=(abcmidi abcm2ps fluidsynth timgm6mb-soundfont sox libsox-fmt-all chromium strace)
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
# abcjs draws the page's score and follows the audio with it; pinned by version and by the
# integrity npm records for it. It goes into a git-ignored folder the app serves; a page without
# it shows the SVG score from abcm2ps.
ABCJS_VERSION=6.7.2
ABCJS_INTEGRITY=sha512-cHCyf8j0hAcxTuwZ9l2QznaSlLK1TD2s5oVw6Ig8Kfss6VfJKoNJ1kAzMBwa6DDWeyNl2JH7mN/U+MJ8MYbC5g==
ABCJS_DIR=server/page/vendor
if ! command -v npm >/dev/null; then
    SYSTEM_PACKAGES+=(npm)
fi

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

install_abcjs() {
    if [[ -f $ABCJS_DIR/abcjs-basic-min.js && $(cat "$ABCJS_DIR/VERSION" 2>/dev/null) == "$ABCJS_VERSION" ]]; then
        return
    fi
    local work
    work=$(mktemp -d)
    (cd "$work" && npm pack --silent --ignore-scripts "abcjs@$ABCJS_VERSION" >/dev/null)
    local tarball=$work/abcjs-$ABCJS_VERSION.tgz
    local integrity
    integrity=$(.venv/bin/python -c 'import base64, hashlib, sys
print("sha512-" + base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' "$tarball")
    if [[ $integrity != "$ABCJS_INTEGRITY" ]]; then
        echo "abcjs $ABCJS_VERSION from npm does not match its pinned integrity; not installed" >&2
        rm -rf "$work"
        exit 1
    fi
    tar -xzf "$tarball" -C "$work" package/dist/abcjs-basic-min.js package/LICENSE.md
    mkdir -p "$work/vendor"
    mv "$work/package/dist/abcjs-basic-min.js" "$work/package/LICENSE.md" "$work/vendor/"
    echo "$ABCJS_VERSION" >"$work/vendor/VERSION"
    rm -rf "$ABCJS_DIR"
    mv "$work/vendor" "$ABCJS_DIR"
    rm -rf "$work"
}
install_abcjs
echo "img2music is installed: .venv/bin/img2music --help"
