#!/usr/bin/env bash
# Installs what the third-party memcached tests (tests/memcached, run by
# tests/memcached_third_party.rs) need on a fresh Debian machine, as root:
#   - memcached: the reference server the suite is validated against (MEMCACHED_UNDER_TEST=memcached)
#   - libmemcached-tools: memccapable and memcaslap, libmemcached's protocol checker and load tool
#   - prometheus: promtool and a Prometheus server for tests/prometheus.rs
#   - nutcracker: twemproxy, in front of the fleet of tests/fleet.rs
#   - iproute2: `ip`, which tools/fleet.sh and tests/fleet.rs make their network namespaces with
#   - Python packages pinned in tests/memcached/requirements.txt (pytest, pymemcache, python-memcached)
# Idempotent and quiet: packages already present are left alone, and apt-get update runs at most
# once, only when something is missing. Prints one line per thing it had to do.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive

want=(memcached libmemcached-tools nutcracker prometheus iproute2)
missing=()
for pkg in "${want[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || missing+=("$pkg")
done
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3 python3-pip)

if ((${#missing[@]})); then
    echo "install-test-deps: apt-get install ${missing[*]}"
    apt-get update -qq >/dev/null
    available=()
    for pkg in "${missing[@]}"; do
        policy=$(apt-cache policy "$pkg" 2>/dev/null)
        if [[ $policy =~ Candidate:\ [^\(] ]]; then
            available+=("$pkg")
        else
            echo "install-test-deps: warning: Debian has no package $pkg here; skipping it" >&2
        fi
    done
    if ((${#available[@]})); then
        log=$(mktemp)
        if ! apt-get install -y -qq --no-install-recommends "${available[@]}" >"$log" 2>&1; then
            cat "$log" >&2
            rm -f "$log"
            exit 1
        fi
        rm -f "$log"
    fi
fi

# Debian's own python3 refuses system-wide pip installs (PEP 668) unless told otherwise; a pyenv
# or venv python has no such marker and takes none of this.
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
pip_args=(-q --no-warn-script-location)
if python3 -c 'import sys, sysconfig, os; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))' 2>/dev/null; then
    pip_args+=(--break-system-packages)
fi
# Quiet and quick when every pinned version is already there.
python3 -m pip install "${pip_args[@]}" -r tests/memcached/requirements.txt
