#!/usr/bin/env bash
# Install the Debian packages listed in .ci/apt-packages.txt that are missing; do nothing when all are installed.
#
#   bash .ci/install-apt-packages.sh [LIST]        (also: make apt-deps)
#
# Needs root (CI runs as root) only when something is missing; otherwise it prints the apt-get command to run.
# Exit codes: 0 all installed, 1 missing and not root, or apt-get failed.
set -euo pipefail
cd "$(dirname "$0")/.."
list="${1:-.ci/apt-packages.txt}"

mapfile -t wanted < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$list" | grep -v '^$')
missing=()
for pkg in "${wanted[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$pkg")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "apt-deps: all ${#wanted[@]} packages of $list are installed"
  exit 0
fi

cmd="apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "apt-deps: error: missing Debian packages: ${missing[*]} (listed in $list)." >&2
  echo "apt-deps: installing them needs root; run:  sudo sh -c '$cmd'" >&2
  exit 1
fi
echo "apt-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Wait for a dpkg lock held by another apt run instead of failing at once.
apt-get -o DPkg::Lock::Timeout=600 update -q
apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}"
