# shellcheck shell=bash
# Helpers shared by the image/ scripts: logging, timing, architecture names, Debian
# packages on the host, binfmt for qemu-user, a private apt for foreign architectures and
# the cache folder. Sourced, never run.

# The Debian release the gateway runs; its Python (3.11) is the one the wheels are built for.
: "${WMBUS_IMAGE_SUITE:=bookworm}"
: "${WMBUS_IMAGE_MIRROR:=http://deb.debian.org/debian}"
: "${WMBUS_IMAGE_SECURITY_MIRROR:=http://deb.debian.org/debian-security}"
: "${WMBUS_IMAGE_CACHE:=${XDG_CACHE_HOME:-$HOME/.cache}/wmbus-stream-image}"
# shellcheck disable=SC2034  # used by the scripts that source this file
PY_VERSION=3.11

IMAGE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPO_DIR=$(cd "$IMAGE_DIR/.." && pwd)
PROGRAM=${PROGRAM:-$(basename "$0")}
SCRIPT_START=$(date +%s)
STEP_NAME=""
STEP_START=0
TIMINGS=()

log() { printf '%s: %s\n' "$PROGRAM" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROGRAM" "$*" >&2; exit 1; }
usage_error() { printf '%s: %s\n(see %s --help)\n' "$PROGRAM" "$*" "$PROGRAM" >&2; exit 2; }

# step NAME: ends the step before (recording its duration) and starts NAME.
step() {
    step_end
    STEP_NAME=$1
    STEP_START=$(date +%s)
    printf '\n== %s\n' "$STEP_NAME" >&2
}
step_end() {
    if [ -n "$STEP_NAME" ]; then
        TIMINGS+=("$(( $(date +%s) - STEP_START ))s  $STEP_NAME")
        STEP_NAME=""
    fi
}
# print_timings: every finished step's duration and the total, to stderr.
print_timings() {
    step_end
    local line
    printf '\n== timings (wall clock)\n' >&2
    for line in "${TIMINGS[@]}"; do printf '  %s\n' "$line" >&2; done
    printf '  %ss  total\n' "$(( $(date +%s) - SCRIPT_START ))" >&2
}

human_size() { numfmt --to=iec-i --suffix=B --format='%.1f' "$1"; }

# Debian architecture -> GNU triplet, wheel machine name, qemu-user name.
triplet_of() {
    case $1 in
        arm64) echo aarch64-linux-gnu ;;
        armhf) echo arm-linux-gnueabihf ;;
        *) die "unsupported architecture '$1' (arm64 or armhf)" ;;
    esac
}
machine_of() {
    case $1 in
        arm64) echo aarch64 ;;
        armhf) echo armv7l ;;
        *) die "unsupported architecture '$1' (arm64 or armhf)" ;;
    esac
}
debarch_of() {
    case $1 in
        aarch64 | arm64) echo arm64 ;;
        armv7l | armhf) echo armhf ;;
        *) return 1 ;;
    esac
}

need_root() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (mmdebstrap, chroot and binfmt need it)"
}

# need_debs PKG...: installs the Debian packages that are not installed yet.
need_debs() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing Debian packages: ${missing[*]}"
    need_root
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# ensure_binfmt DEBARCH: makes foreign binaries of DEBARCH run through qemu-user-static.
ensure_binfmt() {
    local arch=$1 qemu
    need_debs qemu-user-static binfmt-support arch-test
    case $arch in arm64) qemu="qemu-aarch64" ;; armhf) qemu="qemu-arm" ;; *) die "no binfmt for $arch" ;; esac
    if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || die "cannot mount binfmt_misc"
    fi
    if [ ! -e "/proc/sys/fs/binfmt_misc/$qemu" ]; then
        update-binfmts --enable "$qemu" >/dev/null 2>&1 || true
    fi
    arch-test "$arch" >/dev/null 2>&1 || die "cannot run $arch binaries here (binfmt $qemu); see docs/image.md"
}

# apt_for DEBARCH[+firmware]: sets APT_FOR to apt-get options of a private apt state for DEBARCH
# (own lists, empty dpkg status), so foreign packages can be downloaded without
# `dpkg --add-architecture` on the host (multiarch breaks on any mirror skew and
# upgrades host packages to keep them in lockstep). SOURCES gets the sources.list lines,
# the security suite left out when "$root/no-security" exists (see apt_update_for);
# DEBARCH+firmware adds Debian's non-free-firmware component (raspi-firmware).
apt_for() {
    local arch=${1%+firmware} root="$WMBUS_IMAGE_CACHE/apt-$1" keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    local components=main
    [ "$arch" = "$1" ] || components="main non-free-firmware"
    mkdir -p "$root/lists/partial" "$root/archives/partial" "$root/parts" "$root/prefs"
    [ -e "$root/status" ] || : > "$root/status"
    SOURCES=("deb $WMBUS_IMAGE_MIRROR $WMBUS_IMAGE_SUITE $components"
             "deb $WMBUS_IMAGE_MIRROR $WMBUS_IMAGE_SUITE-updates $components")
    [ -e "$root/no-security" ] || SOURCES+=("deb $WMBUS_IMAGE_SECURITY_MIRROR $WMBUS_IMAGE_SUITE-security $components")
    printf '%s\n' "${SOURCES[@]}" | sed "s|^deb |deb [arch=$arch signed-by=$keyring] |" > "$root/sources.list"
    APT_FOR=(
        -o "APT::Architecture=$arch" -o "APT::Architectures=$arch" -o "APT::Sandbox::User=root"
        -o "Dir::Etc::SourceList=$root/sources.list" -o "Dir::Etc::SourceParts=$root/parts"
        -o "Dir::Etc::Preferences=$root/prefs/none" -o "Dir::Etc::PreferencesParts=$root/prefs"
        -o "Dir::State=$root" -o "Dir::State::Lists=$root/lists" -o "Dir::State::status=$root/status"
        -o "Dir::Cache=$root" -o "Dir::Cache::archives=$root/archives"
        -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache="
        -o "Acquire::Languages=none" -o "Acquire::Check-Valid-Until=false"
    )
}

# apt_update_for DEBARCH: refreshes the private package lists (at most once an hour, or
# always with WMBUS_IMAGE_REFRESH=1). A mirror caught mid-sync serves a security index
# that does not match its Release file (seen for armhf); apt then ignores the whole
# security suite. Rather than build from a half-read state, the suite is left out
# explicitly with a warning, which the image manifest records, or the build stops when
# WMBUS_IMAGE_REQUIRE_SECURITY=1.
apt_update_for() {
    local arch=$1 root="$WMBUS_IMAGE_CACHE/apt-$1"
    local stamp="$root/updated"
    if [ "${WMBUS_IMAGE_REFRESH:-0}" != 1 ] && [ -n "$(find "$stamp" -mmin -60 2>/dev/null)" ]; then
        apt_for "$arch"
        return 0
    fi
    mkdir -p "$root"
    rm -f "$root/no-security" "$stamp"
    apt_for "$arch"
    if ! apt-get "${APT_FOR[@]}" -qq update 2> "$root/update.log"; then
        cat "$root/update.log" >&2
        if [ "${WMBUS_IMAGE_REQUIRE_SECURITY:-0}" = 1 ] || ! grep -q -- "-security" "$root/update.log"; then
            die "apt-get update for $arch failed"
        fi
        log "WARNING: the $WMBUS_IMAGE_SUITE-security index for $arch is broken on this mirror;"
        log "WARNING: building WITHOUT $WMBUS_IMAGE_SUITE-security for $arch (recorded in the manifest)."
        log "WARNING: rebuild when the mirror is in sync, or set WMBUS_IMAGE_REQUIRE_SECURITY=1 to refuse."
        touch "$root/no-security"
        apt_for "$arch"
        apt-get "${APT_FOR[@]}" -qq update || die "apt-get update for $arch failed"
    fi
    touch "$stamp"
}

# security_suite_used DEBARCH: "true" unless apt_update_for had to leave the suite out.
security_suite_used() {
    if [ -e "$WMBUS_IMAGE_CACHE/apt-$1/no-security" ]; then echo false; else echo true; fi
}

# deb_download DEBARCH DIR PKG...: downloads the .debs (no dependencies) into DIR.
deb_download() {
    local arch=$1 dir=$2
    shift 2
    apt_update_for "$arch"
    mkdir -p "$dir"
    (cd "$dir" && apt-get "${APT_FOR[@]}" -qq download "$@") || die "cannot download $* for $arch"
}

# deb_version DEBARCH PKG: the candidate version of PKG in the private apt state.
deb_version() {
    apt_update_for "$1"
    apt-cache "${APT_FOR[@]}" show --no-all-versions "$2" 2>/dev/null | sed -n 's/^Version: //p' | head -n1
}

# clean_env CMD...: runs CMD without the variables that point a host Python or pip at the
# machine's own extras (find-links, PYTHONPATH, an active venv).
clean_env() {
    env -u PIP_FIND_LINKS -u PYTHONPATH -u VIRTUAL_ENV -u PYTHONHOME "$@"
}

# pip_quiet PYTHON ARGS...: `PYTHON -m pip ARGS` with the noise of unreachable local
# indexes (file:// locations in a machine's pip.conf) filtered out of stderr.
pip_quiet() {
    local py=$1
    shift
    clean_env "$py" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

# project_version: the version in src/wmbus_stream/__init__.py (no import needed).
project_version() {
    sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$REPO_DIR/src/wmbus_stream/__init__.py"
}

# git_describe: the checkout's commit, "+dirty" when the work tree has changes.
git_describe() {
    local rev
    rev=$(git -C "$REPO_DIR" rev-parse --short=12 HEAD 2>/dev/null) || { echo unknown; return; }
    if [ -n "$(git -C "$REPO_DIR" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
        rev="$rev+dirty"
    fi
    echo "$rev"
}
