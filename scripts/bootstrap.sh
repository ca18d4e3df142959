#!/usr/bin/env bash
# airlock bootstrap: make this machine ready to run airlock, idempotently.
#   - Debian packages (Docker engine, gVisor, base-image tools, skopeo, registry, git, chromium)
#   - npm dependencies
#   - dockerd with user-namespace remapping, no bridge, no iptables, runsc registered
#   - base images built locally (no registry to pull from): airlock/base:busybox, airlock/base:bookworm
#   - a runsc compatibility self-test per base image, recorded for policy
#   - the private registry (docker-registry on 127.0.0.1:5000, htpasswd auth) for the trusted builder
# Safe to run again and again: every step checks before it acts. Exits non-zero with a
# plain message when it cannot finish, rather than leaving a half-set-up machine silently.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
script_setup bootstrap "${BASH_SOURCE[0]}" "$@"

# Checked first, with shell builtins only, so the message is clear whatever the machine lacks.
[ "${EUID:-$(id -u)}" -eq 0 ] || die "must run as root (it installs Debian packages and starts dockerd); try: sudo npm run bootstrap"
command -v apt-get >/dev/null || die "apt-get not found: airlock's bootstrap supports Debian 12 (bookworm) only"

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
state_dir=${AIRLOCK_STATE_DIR:-/var/lib/airlock}
cache_dir=${AIRLOCK_CACHE_DIR:-/var/cache/airlock}
docker_bin=/usr/bin/docker   # Debian's client, matching Debian's engine
export DOCKER_HOST=${DOCKER_HOST:-unix:///var/run/docker.sock}

# ---- 1. Debian packages ------------------------------------------------------------------
pkgs=(docker.io busybox-static debootstrap runsc skopeo docker-registry git gnupg uidmap ca-certificates e2fsprogs util-linux jq)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# The status page's browser test drives Debian's chromium through playwright-core (no browser download).
[ -x /usr/bin/chromium ] || missing+=(chromium)
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

# ---- 5. private registry --------------------------------------------------------------------
# The trusted builder's push target for the demo: Debian's docker-registry on 127.0.0.1:5000 only,
# run as the package's unprivileged docker-registry user, with htpasswd auth for one generated user.
# Its password sits in credentials.json (0600), which the builder's file SecretStore serves.
# No systemd here: it runs under nohup with a pid file, and is (re)started only when it does not
# answer or when its config or htpasswd changed.
reg_addr=127.0.0.1:5000
reg_user=airlock-builder
reg_conf_dir=/etc/airlock/registry
reg_dir="$state_dir/registry"
reg_creds="$reg_dir/credentials.json"
reg_pid_file=/run/airlock/registry.pid
reg_log=/var/log/airlock-registry.log
mkdir -p "$reg_conf_dir" "$reg_dir/data" /run/airlock
chmod 0711 "$reg_dir"   # the docker-registry user may reach data/, not list credentials.json
[ "$(stat -c %U "$reg_dir/data")" = docker-registry ] || chown -R docker-registry:docker-registry "$reg_dir/data"
chmod 0700 "$reg_dir/data"
want_reg_conf="version: 0.1
log:
  level: info
  fields:
    service: airlock-registry
storage:
  filesystem:
    rootdirectory: $reg_dir/data
http:
  addr: $reg_addr
  headers:
    X-Content-Type-Options: [nosniff]
auth:
  htpasswd:
    realm: airlock-registry
    path: $reg_conf_dir/htpasswd"
reg_restart=false
if [ "$(cat "$reg_conf_dir/config.yml" 2>/dev/null)" != "$want_reg_conf" ]; then
  printf '%s\n' "$want_reg_conf" > "$reg_conf_dir/config.yml"
  reg_restart=true
fi
# bcrypt needs the helper (no htpasswd binary here); skipped when both files exist and the htpasswd
# is not older than the credentials. It never rewrites an existing password.
if [ ! -s "$reg_creds" ] || [ ! -s "$reg_conf_dir/htpasswd" ] || [ "$reg_creds" -nt "$reg_conf_dir/htpasswd" ]; then
  changed=$("$repo/node_modules/.bin/tsx" "$repo/scripts/registry-htpasswd.ts" "$reg_creds" "$reg_conf_dir/htpasswd" "$reg_user") \
    || die "could not write the registry credentials ($reg_creds, $reg_conf_dir/htpasswd)"
  [ "$changed" = changed ] && { say "registry credentials written for $reg_user"; reg_restart=true; }
fi
chown root:docker-registry "$reg_conf_dir/htpasswd"
chmod 0640 "$reg_conf_dir/htpasswd"
chmod 0600 "$reg_creds"

# GET /v2/ on the registry with bash's /dev/tcp (curl is not among our packages); $1 = optional
# base64 user:password. Prints the HTTP status, or 000 when nothing answers.
registry_status() (
  auth=''
  [ -n "${1:-}" ] && auth="Authorization: Basic $1"$'\r\n'
  { exec 3<>"/dev/tcp/${reg_addr%:*}/${reg_addr#*:}"; } 2>/dev/null || { echo 000; exit 0; }
  printf 'GET /v2/ HTTP/1.0\r\nHost: %s\r\n%s\r\n' "$reg_addr" "$auth" >&3
  read -r -t 5 _ code _ <&3 2>/dev/null || code=000
  echo "${code:-000}"
)
# The pid from our pid file, only if that process is still our docker-registry.
registry_pid() {
  local pid
  pid=$(cat "$reg_pid_file" 2>/dev/null) || return 1
  [ -n "$pid" ] && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q "docker-registry serve $reg_conf_dir/config.yml" && echo "$pid"
}

if [ "$reg_restart" = true ] && pid=$(registry_pid); then
  say "registry config or credentials changed: restarting it"
  kill "$pid"
  for _ in $(seq 1 100); do [ "$(registry_status)" = 000 ] && break; sleep 0.1; done
fi
if [ "$(registry_status)" = 000 ]; then
  say "starting docker-registry on $reg_addr"
  nohup setpriv --reuid=docker-registry --regid=docker-registry --init-groups --no-new-privs --inh-caps=-all \
    /usr/bin/docker-registry serve "$reg_conf_dir/config.yml" >>"$reg_log" 2>&1 &
  echo $! > "$reg_pid_file"
  for i in $(seq 1 100); do
    [ "$(registry_status)" != 000 ] && break
    [ "$i" -eq 100 ] && die "docker-registry did not answer on $reg_addr in 10 s; see $reg_log"
    sleep 0.1
  done
fi
reg_basic=$(sed -n 's/.*"username": *"\([^"]*\)".*"password": *"\([^"]*\)".*/\1:\2/p' "$reg_creds" | tr -d '\n' | base64 -w0)
[ "$(registry_status)" = 401 ] || die "the registry on $reg_addr does not ask for credentials (GET /v2/ → $(registry_status), want 401); is something else on that port? see $reg_log"
[ "$(registry_status "$reg_basic")" = 200 ] || die "the registry on $reg_addr refuses $reg_user's credentials from $reg_creds; see $reg_log"

say "ready"
