#!/usr/bin/env bash
# AstralBoot's two set-up commands, for a fresh Debian 12 (or newer) machine:
#
#   ./run.sh demo [--uefi]   install everything, then boot a QEMU guest through
#                            the whole chain in an isolated namespace network
#   ./run.sh test [ARGS]     install the test dependencies, then run every test
#                            (ARGS go to pytest)
#   ./run.sh bench [NAME]    install the peers too (dnsmasq, Kea, nginx), run bench/
#
# Root is needed: packages come from apt, and the demo and the tests build
# network namespaces. Nothing here touches a real network interface.
set -euo pipefail
cd "$(dirname "$0")"
here=$(pwd)

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'run.sh: %s\n' "$*" >&2; exit 2; }

[ "$(id -u)" -eq 0 ] || die "needs root (apt packages and network namespaces): sudo ./run.sh $*"

# What every use needs: Python, namespaces, QEMU and the firmware and images it boots.
APT_RUN="python3 python3-venv iproute2 qemu-system-x86 ipxe-qemu ipxe ovmf
         debian-installer-12-netboot-amd64 debian-installer-12-netboot-arm64"
# Real clients and peers the tests drive, a real IPFS node (npm), PostgreSQL.
APT_TEST="curl busybox udhcpc isc-dhcp-client isc-dhcp-relay kea-admin dnsmasq-base tftp-hpa atftp
          bind9-dnsutils postgresql systemd systemd-container mmdebstrap openssl grub-common"
# Only the benchmarks: the servers AstralBoot is measured against, wrk and dnsperf.
APT_BENCH="kea-dhcp4-server nginx-light wrk dnsperf"

apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "apt: installing ${missing[*]}"
    apt-get update -qq
    # No service a package ships may start on this host's real network.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    rm -f /usr/sbin/policy-rc.d
}

python_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }

venv() {
    local extra=$1 py
    # Debian's own Python when it will do: it is what a deployment runs, and its
    # files are readable by the unprivileged user the services become (one
    # under /root is not).
    py=/usr/bin/python3
    python_ok "$py" || py=$(command -v python3)
    python_ok "$py" || die "Python 3.11 or newer is needed ($py is older)"
    local home
    home=$("$py" -c 'import os, sys; print(os.path.dirname(sys.executable))')
    if [ ! -x .venv/bin/python ] || ! python_ok .venv/bin/python \
            || ! grep -qx "home = $home" .venv/pyvenv.cfg 2>/dev/null; then
        say "creating .venv with $py"
        rm -rf .venv
        "$py" -m venv .venv
    fi
    local stamp=".venv/.installed$extra"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        say "pip: installing astralboot$extra"
        .venv/bin/pip install -q --upgrade pip
        .venv/bin/pip install -q -e ".$extra"
        touch "$stamp"
    fi
}

ipfs_node() {
    # Any Node.js 18+ with npm will do (Debian's, or NodeSource's).
    command -v npm >/dev/null && command -v node >/dev/null || apt_install nodejs npm
    if [ ! -d tests/ipfs/node_modules ] || [ tests/ipfs/package-lock.json -nt tests/ipfs/node_modules ]; then
        say "npm: installing the test IPFS node (js-ipfs)"
        (cd tests/ipfs && npm ci --no-audit --no-fund --loglevel=error)
        touch tests/ipfs/node_modules
    fi
}

postgres() {
    if ! pg_isready -q -h 127.0.0.1 -p 5432; then
        say "starting PostgreSQL"
        local version
        version=$(ls /etc/postgresql | sort -V | tail -1)
        pg_ctlcluster --skip-systemctl-redirect "$version" main start \
            || die "PostgreSQL would not start"
        for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
    fi
    # The tests connect as postgres over TCP without a password and make throw-away databases.
    psql -h 127.0.0.1 -U postgres -d postgres -Atqc "select 1" >/dev/null 2>&1 \
        || die "PostgreSQL on 127.0.0.1:5432 must accept user postgres without a password (trust)"
    psql -h 127.0.0.1 -U postgres -d postgres -Atqc \
        "select 1 from pg_database where datname='test'" | grep -q 1 \
        || psql -h 127.0.0.1 -U postgres -d postgres -qc "create database test"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
    demo)
        apt_install $APT_RUN
        venv ""
        exec .venv/bin/astralboot demo "$@"
        ;;
    test)
        apt_install $APT_RUN $APT_TEST
        venv "[test]"
        ipfs_node
        postgres
        say "pytest"
        exec .venv/bin/python -m pytest "$@"
        ;;
    bench)
        apt_install $APT_RUN $APT_TEST $APT_BENCH
        venv "[test]"
        ipfs_node
        postgres
        exec .venv/bin/python -m bench "$@"
        ;;
    *)
        sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac
