#!/usr/bin/env bash
# Build the Kubernetes control-plane binaries for the `k8s` test tier, once, into a cache.
#
# There is no Docker/kind on our machines and the only reachable networks are the package
# registries, so the binaries come from Debian's own source package `kubernetes` (1.20.2, with
# every Go dependency vendored) built with Debian's Go toolchain. etcd comes ready-made from
# Debian's `etcd-server`.
#
# Idempotent: when the three binaries already sit in the cache it only checks etcd and exits.
# Runs non-interactively as root on Debian 12 (bookworm).
#
#   REXEC_K8S_CACHE       cache dir, outside the repo (default /var/cache/rexec-k8s)
#   REXEC_K8S_KEEP_BUILD  1 = keep the unpacked source tree and Go build cache after success
#   REXEC_K8S_FORCE       1 = rebuild even if the binaries are cached
#
# Result: $REXEC_K8S_CACHE/bin/{kube-apiserver,kube-controller-manager,kube-scheduler}
# (measured here: ~40 min on 2 cores for all three; see build.log for the timing of each run).
set -euo pipefail

CACHE="${REXEC_K8S_CACHE:-/var/cache/rexec-k8s}"
BIN="$CACHE/bin"
SRC="$CACHE/src"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler)
# Packages needed at run time (etcd, openssl for certs) and to build (Go, rsync, dpkg-source).
APT_PACKAGES=(golang-go rsync etcd-server etcd-client dpkg-dev make openssl jq ca-certificates)

log() { printf '[k8s-build %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

have_binaries() {
    local b
    for b in "${BINARIES[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done
}

have_packages() {
    local p
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || return 1
    done
}

if [[ $EUID -ne 0 ]]; then
    echo "build.sh must run as root (it installs Debian packages)" >&2
    exit 1
fi

mkdir -p "$CACHE" "$BIN"
# Two runs at once (a developer and a pytest session in CI, say) would trample one source tree.
exec 9>"$CACHE/.build.lock"
if ! flock -w 3600 9; then
    echo "timed out waiting for another build.sh holding $CACHE/.build.lock" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
if ! have_packages; then
    log "installing Debian packages: ${APT_PACKAGES[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
fi

if have_binaries && [[ "${REXEC_K8S_FORCE:-0}" != 1 ]]; then
    log "binaries already cached in $BIN; nothing to build"
    exit 0
fi

# apt-get source needs deb-src entries; the machine ships deb lines only. Mirror the bookworm
# sources (deb822 file in sources.list.d, or the classic sources.list) as deb-src.
SRC_LIST=/etc/apt/sources.list.d/rexec-k8s-src.sources
if [[ -z "$(apt-cache showsrc kubernetes 2>/dev/null)" ]]; then
    if [[ ! -e "$SRC_LIST" ]]; then
        log "adding deb-src entries ($SRC_LIST)"
        uri=""
        if [[ -e /etc/apt/sources.list.d/debian.sources ]]; then
            uri=$(awk '/^URIs:/ && $2 ~ /debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
        fi
        if [[ -z "$uri" && -e /etc/apt/sources.list ]]; then
            uri=$(awk '$1 == "deb" && $0 ~ /bookworm / {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' /etc/apt/sources.list)
        fi
        uri="${uri:-http://deb.debian.org/debian}"
        cat >"$SRC_LIST" <<EOF
# Added by rexec scripts/k8s/build.sh: lets 'apt-get source kubernetes' work.
Types: deb-src
URIs: $uri
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    fi
    apt-get update -qq
fi

mkdir -p "$SRC"
tree=$(find "$SRC" -maxdepth 1 -type d -name 'kubernetes-*' | sort | tail -n1)
if [[ -z "$tree" || ! -f "$tree/Makefile" || ! -d "$tree/vendor" ]]; then
    log "fetching Debian source package 'kubernetes' into $SRC"
    rm -rf "${SRC:?}"/kubernetes*
    # apt drops privileges to _apt for downloads; the cache dir belongs to root, which only
    # costs a warning.
    (cd "$SRC" && apt-get source -qq kubernetes)
    tree=$(find "$SRC" -maxdepth 1 -type d -name 'kubernetes-*' | sort | tail -n1)
fi
[[ -n "$tree" ]] || { echo "apt-get source kubernetes produced no source tree" >&2; exit 1; }
log "source tree: $tree"

# Same environment as Debian's debian/rules: a GOPATH whose k8s.io/kubernetes points at the
# tree, static binaries. GOPROXY=off because every dependency is vendored and no module proxy
# is to be asked. HOME points into the cache so Go leaves nothing in root's home.
export GOPATH="$tree/.go"
export PATH="/usr/lib/go/bin:$PATH"
export CGO_ENABLED=0
export GOPROXY=off GOFLAGS="" GOTOOLCHAIN=local
export HOME="$CACHE/home"
mkdir -p "$HOME" "$GOPATH/src/k8s.io"
[[ -L "$GOPATH/src/k8s.io/kubernetes" ]] || ln -s ../../.. "$GOPATH/src/k8s.io/kubernetes"
# Without a git checkout the version would read v0.0.0-master; say what it is instead.
upstream=$(basename "$tree" | sed -E 's/^kubernetes-//; s/.*really//')
export KUBE_GIT_VERSION="v${upstream}" KUBE_GIT_TREE_STATE=clean

whats=""
for b in "${BINARIES[@]}"; do whats+="cmd/$b "; done
log "building ${BINARIES[*]} with $(go version) (takes tens of minutes on 2 cores)"
start=$(date +%s)
(cd "$tree" && make WHAT="${whats% }")
elapsed=$(( $(date +%s) - start ))

for b in "${BINARIES[@]}"; do
    install -m 0755 "$tree/_output/bin/$b" "$BIN/$b"
done
echo "v${upstream} built $(date -u +%FT%TZ) in ${elapsed}s with $(go version | awk '{print $3}')" >"$BIN/VERSION"
log "built in ${elapsed}s: $(cat "$BIN/VERSION")"

if [[ "${REXEC_K8S_KEEP_BUILD:-0}" != 1 ]]; then
    # The tree plus Go's build cache are a few GB; only the binaries are needed from here on.
    log "removing the build tree (set REXEC_K8S_KEEP_BUILD=1 to keep it)"
    chmod -R u+w "$tree" 2>/dev/null || true
    rm -rf "$tree" "$CACHE/home"
fi
