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
# Measured on a 2-core/24 GB Debian 12 machine: 10 min wall (609 s in `make`) for all three,
# peak ~1.4 GB RSS (the linker); ~35 s more for apt and apt-get source. Needs a few GB of
# disk while building; afterwards only the binaries (~250 MB) stay.
set -euo pipefail

CACHE="${REXEC_K8S_CACHE:-/var/cache/rexec-k8s}"
BIN="$CACHE/bin"
SRC="$CACHE/src"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler)
# Packages needed at run time (etcd, openssl for certs, curl for health checks) and to build
# (Go, rsync, dpkg-source, and the two Go libraries that replace broken vendored copies below).
APT_PACKAGES=(golang-go rsync etcd-server etcd-client dpkg-dev make openssl curl jq ca-certificates
    golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev)

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

# Kubernetes 1.20 vendors reflect2 v1.0.1 and json-iterator v1.1.10. Built with Go >= 1.18
# (Debian 12 has only 1.19) the apiserver then panics with a nil pointer in
# reflect2.(*frozenConfig).Type2 on the first request body holding a map (a Namespace with
# labels, say): the connection drops without a response. Upstream's fix (backported to
# 1.21-1.23) was reflect2 v1.0.2 + json-iterator v1.1.12, which is exactly what Debian ships as
# Go source packages; swap them into vendor/. go.mod/modules.txt keep the old version strings,
# which Go does not check against the files.
vendor_from_debian() {
    local pkg="$1" from="/usr/share/gocode/src/$1" to="$tree/vendor/$1"
    [[ -d "$from" && -d "$to" ]] || { echo "cannot replace vendor/$pkg from $from" >&2; exit 1; }
    find "$to" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) -delete
    find "$from" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) ! -name '*_test.go' \
        -exec cp {} "$to/" \;
    log "vendor/$pkg replaced by Debian's $(dpkg-query -W -f='${Package} ${Version}' \
        "$(dpkg-query -S "$from" | head -n1 | cut -d: -f1)")"
}
vendor_from_debian github.com/modern-go/reflect2
vendor_from_debian github.com/json-iterator/go

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
echo "v${upstream} built $(date -u +%FT%TZ) in ${elapsed}s with $(go version | awk '{print $3}')," \
    "reflect2 1.0.2 + json-iterator 1.1.12 from Debian" >"$BIN/VERSION"
log "built in ${elapsed}s: $(cat "$BIN/VERSION")"

if [[ "${REXEC_K8S_KEEP_BUILD:-0}" != 1 ]]; then
    # The tree, Go's build cache and the downloaded source are a few GB; only the binaries are needed from here on.
    log "removing the build tree (set REXEC_K8S_KEEP_BUILD=1 to keep it)"
    chmod -R u+w "$tree" 2>/dev/null || true
    rm -rf "${SRC:?}" "${CACHE:?}/home"
fi
