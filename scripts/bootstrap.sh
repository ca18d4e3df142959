#!/usr/bin/env bash
# airlock bootstrap: make this machine ready to run airlock, idempotently.
#   - Debian packages (Docker engine, gVisor, base-image tools, skopeo, registry, git)
#   - npm dependencies
#   - dockerd with user-namespace remapping, no bridge, no iptables, runsc registered
#   - base images built locally (no registry to pull from): airlock/base:busybox, airlock/base:bookworm
#   - a runsc compatibility self-test per base image, recorded for policy
# Safe to run again and again: every step checks before it acts. Exits non-zero with a
# plain message when it cannot finish, rather than leaving a half-set-up machine silently.
set -euo pipefail

say() { printf 'bootstrap: %s\n' "$*" >&2; }
die() { printf 'bootstrap: error: %s\n' "$*" >&2; exit 1; }

# Checked first, with shell builtins only, so the message is clear whatever the machine lacks.
[ "${EUID:-$(id -u)}" -eq 0 ] || die "must run as root (it installs Debian packages and starts dockerd); try: sudo npm run bootstrap"
command -v apt-get >/dev/null || die "apt-get not found: airlock's bootstrap supports Debian 12 (bookworm) only"

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
state_dir=${AIRLOCK_STATE_DIR:-/var/lib/airlock}
cache_dir=${AIRLOCK_CACHE_DIR:-/var/cache/airlock}
docker_bin=/usr/bin/docker   # Debian's client, matching Debian's engine
export DOCKER_HOST=${DOCKER_HOST:-unix:///var/run/docker.sock}

# ---- 1. Debian packages ------------------------------------------------------------------
pkgs=(docker.io busybox-static debootstrap runsc skopeo docker-registry git gnupg uidmap ca-certificates e2fsprogs util-linux)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
fi

# ---- 2. npm dependencies ------------------------------------------------------------------
if [ ! -f "$repo/node_modules/.package-lock.json" ] || [ "$repo/package-lock.json" -nt "$repo/node_modules/.package-lock.json" ]; then
  say "installing npm dependencies"
  (cd "$repo" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci failed"
fi

# ---- 3. dockerd ---------------------------------------------------------------------------
mkdir -p /etc/docker "$state_dir" "$cache_dir"
want_daemon_json='{
  "runtimes": { "runsc": { "path": "/usr/bin/runsc", "runtimeArgs": ["--network=none"] } },
  "userns-remap": "default",
  "bridge": "none",
  "iptables": false,
  "ip6tables": false,
  "log-driver": "json-file",
  "log-opts": { "max-size": "10m", "max-file": "1" }
}'
if [ "$(cat /etc/docker/daemon.json 2>/dev/null)" != "$want_daemon_json" ]; then
  printf '%s\n' "$want_daemon_json" > /etc/docker/daemon.json
  if "$docker_bin" info >/dev/null 2>&1; then
    say "daemon.json changed: restarting dockerd"
    pid=$(cat /var/run/docker.pid 2>/dev/null || true)
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do "$docker_bin" info >/dev/null 2>&1 || break; sleep 0.1; done
  fi
fi
if ! "$docker_bin" info >/dev/null 2>&1; then
  say "starting dockerd (userns-remap, no bridge, no iptables)"
  # Flags that are in daemon.json must not be repeated on the command line (dockerd refuses).
  nohup /usr/sbin/dockerd >>/var/log/airlock-dockerd.log 2>&1 &
  for i in $(seq 1 300); do
    "$docker_bin" info >/dev/null 2>&1 && break
    [ "$i" -eq 300 ] && die "dockerd did not come up in 30 s; see /var/log/airlock-dockerd.log"
    sleep 0.1
  done
fi
"$docker_bin" info --format '{{json .SecurityOptions}}' | grep -q userns || die "dockerd runs without userns-remap; stop it and run bootstrap again"

# ---- 4. base images -------------------------------------------------------------------------
"$repo/scripts/base-images.sh"

say "ready"
