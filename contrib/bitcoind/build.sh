#!/usr/bin/env bash
# Provide `bitcoind` and `bitcoin-cli` (Bitcoin Core >= 28) for the test suite.
#
#   contrib/bitcoind/build.sh            # prints the directory holding both binaries (last line)
#
# 1. Both binaries on PATH and version >= 28: use them.
# 2. Otherwise build them once from the Bitcoin Core tree shipped inside the py-bitcoinkernel sdist
#    on PyPI (depend/bitcoin, v31.99) into a cache outside the repository, and reuse that cache on
#    every later run (first build: 13-20 minutes on 2 cores, about 25 CPU-minutes). The cache
#    entry only appears, by an atomic rename, once the build and a smoke test have succeeded, so
#    an interrupted build is never mistaken for a finished one.
#
# Environment:
#   SUPERSCALAR_CACHE   cache root (default: $XDG_CACHE_HOME/superscalar or ~/.cache/superscalar)
#   PYTHON              interpreter with pip, used to download the sdist (default: python3)
#   BITCOIND_JOBS       parallel compile jobs (default: nproc)
#   BITCOIND_FORCE_BUILD=1   ignore binaries on PATH (still reuses the cache)
#
# System packages (Debian names): cmake g++ make pkg-config libboost-dev libevent-dev
# libsqlite3-dev. Installed with apt-get when running as root, otherwise the script prints the
# command to run and fails. All progress goes to stderr; stdout carries only the bin directory.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive LC_ALL=C

readonly MIN_MAJOR=28
readonly PBK_VERSION=0.1.0a5
readonly PBK_SHA256=71b91eecac7a8b07248be04471c3bf98016b38bf823aefd28f7b31179940520d
readonly CORE_VERSION=31.99
readonly APT_PACKAGES=(cmake g++ make pkg-config libboost-dev libevent-dev libsqlite3-dev)

CACHE_ROOT=${SUPERSCALAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/superscalar}
PYTHON=${PYTHON:-python3}
JOBS=${BITCOIND_JOBS:-$(nproc 2>/dev/null || echo 2)}
DEST="$CACHE_ROOT/bitcoind-$CORE_VERSION-pbk$PBK_VERSION"

log() { printf 'bitcoind: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Major version of a bitcoind/bitcoin-cli binary ("... version v28.1.0" -> 28), or nothing.
major_version() {
    local out
    out=$("$1" -version 2>/dev/null | head -n 1) || return 0
    [[ $out =~ version\ v?([0-9]+)\. ]] && printf '%s\n' "${BASH_REMATCH[1]}"
    return 0
}

# True when $1/bitcoind and $1/bitcoin-cli both exist, run, and are version >= MIN_MAJOR.
usable_dir() {
    local dir=$1 bin major
    for bin in bitcoind bitcoin-cli; do
        [[ -x "$dir/$bin" ]] || return 1
        major=$(major_version "$dir/$bin")
        [[ -n $major && $major -ge $MIN_MAJOR ]] || return 1
    done
    return 0
}

# 1. Binaries on PATH.
if [[ ${BITCOIND_FORCE_BUILD:-0} != 1 ]] && command -v bitcoind >/dev/null 2>&1; then
    path_dir=$(dirname "$(command -v bitcoind)")
    if usable_dir "$path_dir"; then
        log "using $path_dir/bitcoind (v$(major_version "$path_dir/bitcoind")) from PATH"
        printf '%s\n' "$path_dir"
        exit 0
    fi
    log "bitcoind on PATH ($path_dir) is older than v$MIN_MAJOR or lacks bitcoin-cli: building"
fi

# 2. A finished cache entry.
if usable_dir "$DEST/bin"; then
    log "using cached build in $DEST/bin"
    printf '%s\n' "$DEST/bin"
    exit 0
fi

mkdir -p "$CACHE_ROOT"

# Serialize concurrent builds (several `make test` at once); the winner fills the cache.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$CACHE_ROOT/.bitcoind-build.lock"
    if ! flock -n 9; then
        log "another build holds $CACHE_ROOT/.bitcoind-build.lock: waiting for it"
        flock 9
    fi
    if usable_dir "$DEST/bin"; then
        log "using cached build in $DEST/bin (finished by another process)"
        printf '%s\n' "$DEST/bin"
        exit 0
    fi
fi

# 3. System packages.
missing=()
if command -v dpkg-query >/dev/null 2>&1; then
    for pkg in "${APT_PACKAGES[@]}"; do
        status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
        [[ $status == installed ]] || missing+=("$pkg")
    done
else
    for tool in cmake g++ make pkg-config; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    ((${#missing[@]} == 0)) \
        || die "missing build tools: ${missing[*]}; also needed: Boost headers, libevent, sqlite3"
    log "not a Debian system: assuming Boost, libevent and sqlite3 development files are present"
fi
if ((${#missing[@]} > 0)); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "installing ${missing[*]} with apt-get"
        apt-get update -q >&2
        apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
    else
        log "building bitcoind needs these Debian packages: ${missing[*]}"
        log "install them, then re-run:  sudo apt-get update && sudo apt-get install -y ${missing[*]}"
        log "(or put bitcoind and bitcoin-cli v$MIN_MAJOR or newer on PATH)"
        exit 1
    fi
fi

# 4. Source: the Bitcoin Core tree inside the py-bitcoinkernel sdist.
"$PYTHON" -m pip --version >/dev/null 2>&1 \
    || die "$PYTHON has no pip (set PYTHON to an interpreter with pip, e.g. .venv/bin/python)"

WORK=$(mktemp -d "$CACHE_ROOT/.build.XXXXXX")
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start=$SECONDS
log "downloading the py-bitcoinkernel==$PBK_VERSION sdist"
"$PYTHON" -m pip download -q --no-deps --no-binary :all: --no-input \
    "py-bitcoinkernel==$PBK_VERSION" -d "$WORK/dl" >&2
sdist=$(find "$WORK/dl" -maxdepth 1 -name 'py_bitcoinkernel-*.tar.gz' | head -n 1)
[[ -n $sdist ]] || die "pip downloaded no py-bitcoinkernel sdist"
got=$(sha256sum "$sdist" | cut -d' ' -f1)
[[ $got == "$PBK_SHA256" ]] || die "sdist sha256 mismatch: got $got, want $PBK_SHA256"

mkdir -p "$WORK/src"
tar -xzf "$sdist" -C "$WORK/src" --strip-components=1
SRC="$WORK/src/depend/bitcoin"
[[ -f $SRC/CMakeLists.txt ]] || die "no depend/bitcoin/CMakeLists.txt in the sdist"

# 5. Configure and build only bitcoind and bitcoin-cli.
BUILD_LOG="$CACHE_ROOT/bitcoind-build.log"
log "building bitcoind and bitcoin-cli v$CORE_VERSION with $JOBS jobs (several minutes;"
log "log: $BUILD_LOG)"
run_logged() {
    if ! "$@" >>"$BUILD_LOG" 2>&1; then
        log "FAILED: $*"
        tail -n 60 "$BUILD_LOG" >&2
        exit 1
    fi
}
: >"$BUILD_LOG"
run_logged cmake -S "$SRC" -B "$WORK/build" \
    -DCMAKE_BUILD_TYPE=Release \
    -DENABLE_IPC=OFF \
    -DENABLE_WALLET=ON \
    -DBUILD_DAEMON=ON -DBUILD_CLI=ON \
    -DBUILD_BITCOIN_BIN=OFF -DBUILD_GUI=OFF -DBUILD_TESTS=OFF -DBUILD_BENCH=OFF \
    -DBUILD_FUZZ_BINARY=OFF -DBUILD_TX=OFF -DBUILD_UTIL=OFF -DBUILD_WALLET_TOOL=OFF \
    -DBUILD_KERNEL_LIB=OFF -DBUILD_UTIL_CHAINSTATE=OFF \
    -DWITH_ZMQ=OFF -DWITH_USDT=OFF -DWITH_CCACHE=OFF -DENABLE_EXTERNAL_SIGNER=OFF \
    -DINSTALL_MAN=OFF
run_logged cmake --build "$WORK/build" --target bitcoind bitcoin-cli -j "$JOBS"

# 6. Install into a temp dir, smoke-test, then publish with one rename.
STAGE="$WORK/stage"
mkdir -p "$STAGE/bin"
for bin in bitcoind bitcoin-cli; do
    built=$(find "$WORK/build" -type f -name "$bin" -perm -u+x | head -n 1)
    [[ -n $built ]] || die "the build produced no $bin"
    install -m 0755 "$built" "$STAGE/bin/$bin"
    strip "$STAGE/bin/$bin" 2>/dev/null || true
done
usable_dir "$STAGE/bin" || die "the built binaries do not report version >= $MIN_MAJOR"
"$STAGE/bin/bitcoind" -version | head -n 1 >"$STAGE/VERSION"
printf 'py-bitcoinkernel %s (sha256 %s)\nbuilt %s in %ss\n' \
    "$PBK_VERSION" "$PBK_SHA256" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$((SECONDS - start))" \
    >>"$STAGE/VERSION"
rm -rf "$DEST"  # only a broken leftover can be here: usable_dir failed above
mv -T "$STAGE" "$DEST"
log "built in $((SECONDS - start))s: $(head -n 1 "$DEST/VERSION")"
printf '%s\n' "$DEST/bin"
