#!/usr/bin/env bash
# Prints the Debian mirror this machine's apt already uses (the first
# non-security source in /etc/apt/sources.list or sources.list.d), so that
# scripts never name a mirror host themselves. Exits 1, saying so, when
# apt has no Debian source configured.
set -euo pipefail
mirror=$( (grep -shoE '^(URIs:|deb) +(\[[^]]*\] +)?https?://[^ ]+' /etc/apt/sources.list \
    /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list || true) \
    | grep -v -- '-security' | awk '{print $NF}' | grep -m1 -i debian || true)
if [ -z "$mirror" ]; then
    echo "apt-mirror.sh: no Debian source in /etc/apt/sources.list(.d); set DEBIAN_MIRROR" >&2
    exit 1
fi
echo "$mirror"
