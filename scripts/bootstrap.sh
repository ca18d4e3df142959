#!/usr/bin/env bash
# airlock bootstrap: make this machine ready to run airlock, idempotently.
#   - Debian packages (Docker engine, gVisor, base-image tools, skopeo, registry, git, chromium,
#     postgresql: the tests start servers of their own; Debian's own cluster is neither made nor run)
#   - npm dependencies
#   - dockerd with user-namespace remapping, no bridge, no iptables, runsc registered
#   - base images built locally (no registry to pull from): airlock/base:busybox, airlock/base:bookworm
#   - a runsc compatibility self-test per base image, recorded for policy
#   - the registries (docker-registry, htpasswd auth) the trusted builder pushes to: public images on
#     127.0.0.1:5000 (logins: the builder's, the consumers'), the embargo lane's patched images on
#     127.0.0.1:5001 (logins: the builder's, the security team's)
# Safe to run again and again: every step checks before it acts. Exits non-zero with a
# plain message when it cannot finish, rather than leaving a half-set-up machine silently.
set -euo pipefail
# --help prints the header above; it takes no argument. Builtins only (PATH may be empty here).
case "${1:-}" in
  -h|--help) while IFS= read -r line; do case $line in '#!'*) ;; '#'*) line=${line#\#}; printf '%s\n' "${line# }" ;; *) break ;; esac; done < "${BASH_SOURCE[0]:-/dev/null}"; exit 0 ;;
  '') ;;
  *) printf '%s: unknown argument %s (it takes none; --help says what it does)\n' "bootstrap" "$1" >&2; exit 2 ;;
esac
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
# socat and apt-cacher-ng: the package network of `network: packages` runs (docs/dependencies.md).
# postgresql: the tests run private servers of its binaries (test/support/postgres.ts, docs/testing.md).
# iproute2 (ip netns, veth) and util-linux (nsenter, setpriv): the tests' executor hosts (test/support/hosts.ts).
pkgs=(docker.io busybox-static debootstrap runsc skopeo docker-registry git gnupg uidmap ca-certificates e2fsprogs util-linux iproute2 jq socat apt-cacher-ng postgresql)
# Debian's postgresql makes a cluster 'main' on 5432 at install and starts it. Nothing of airlock's
# uses it, so it is not made (postgresql-common reads this drop-in before it would make it).
mkdir -p /etc/postgresql-common/createcluster.d
want_pg_dropin='# airlock (scripts/bootstrap.sh): the tests start PostgreSQL servers of their own; no system cluster.
create_main_cluster = off'
[ "$(cat /etc/postgresql-common/createcluster.d/airlock.conf 2>/dev/null)" = "$want_pg_dropin" ] \
  || printf '%s\n' "$want_pg_dropin" > /etc/postgresql-common/createcluster.d/airlock.conf
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
# The CI starts apt-cacher-ng itself, on loopback, with its own config: Debian's system service
# (which listens on every interface) must not run beside it.
if [ -x /etc/init.d/apt-cacher-ng ] && [ -f /var/run/apt-cacher-ng/pid ]; then
  say "stopping Debian's apt-cacher-ng service (the CI runs its own)"
  /etc/init.d/apt-cacher-ng stop >/dev/null 2>&1 || true
fi
command -v systemctl >/dev/null && systemctl disable --now apt-cacher-ng >/dev/null 2>&1 || true
# A 'main' cluster made before the drop-in above (an earlier install) is stopped and set to start
# only by hand (start.conf 'manual', which Debian's service and boot scripts honour); its data stays.
if command -v pg_lsclusters >/dev/null; then
  while read -r ver name _ status _; do
    [ "$name" = main ] || continue
    if [ "${status%%,*}" = online ]; then
      say "stopping Debian's PostgreSQL cluster $ver/main (the tests run their own)"
      pg_ctlcluster "$ver" main stop >/dev/null 2>&1 || die "could not stop PostgreSQL cluster $ver/main (pg_ctlcluster $ver main stop)"
    fi
    start_conf=/etc/postgresql/$ver/main/start.conf
    [ ! -f "$start_conf" ] || [ "$(grep -v '^[[:space:]]*#' "$start_conf" | tr -d '[:space:]')" = manual ] || {
      say "PostgreSQL cluster $ver/main: start.conf set to manual (not started at boot)"
      printf '# airlock (scripts/bootstrap.sh): started by hand only; the tests run servers of their own.\nmanual\n' > "$start_conf"
    }
  done < <(pg_lsclusters -h 2>/dev/null)
fi
# The package proxies run as a user of their own, which owns nothing but their cache.
if ! id airlock-proxy >/dev/null 2>&1; then
  say "adding the system user airlock-proxy (the package proxies run as it)"
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin airlock-proxy || die "useradd airlock-proxy failed"
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

# ---- 5. registries ---------------------------------------------------------------------------
# Two registries, each Debian's docker-registry on 127.0.0.1 only, run as the package's
# unprivileged docker-registry user, with htpasswd auth:
#   127.0.0.1:5000  public images. Logins: the trusted builder's push login (airlock-builder,
#                   registry/credentials.json) and the consumers' (airlock-consumer,
#                   registry/consumer.json): the demo hands consumers that one, never the builder's.
#   127.0.0.1:5001  the embargo lane's own registry: patched images, before disclosure. Logins: the
#                   builder's (airlock-builder, registry-private/builder.json) and the security
#                   team's (security-team, registry-private/team.json), no other. Consumers and the
#                   public tier never get one, and the public registry never holds private/.
# docker-registry's htpasswd has no per-user rights: every login may read and push everything in
# its registry. The consumer login cannot be made read-only; that is safe because consumers verify
# the builder's signature, so whatever a consumer login pushes is an image no consumer accepts. For
# the same reason embargoed images get a registry of their own rather than a namespace rule.
# Each password sits in its credentials file (0600, never rewritten), which the builder's file
# SecretStore serves. No systemd here: each runs under nohup with a pid file, and is (re)started
# only when it does not answer or when its config or htpasswd changed.

# GET /v2/ on registry $1 (host:port) with bash's /dev/tcp (curl is not among our packages); $2 =
# optional base64 user:password. Prints the HTTP status, or 000 when nothing answers.
registry_status() (
  addr=$1 auth=''
  [ -n "${2:-}" ] && auth="Authorization: Basic $2"$'\r\n'
  { exec 3<>"/dev/tcp/${addr%:*}/${addr#*:}"; } 2>/dev/null || { echo 000; exit 0; }
  printf 'GET /v2/ HTTP/1.0\r\nHost: %s\r\n%s\r\n' "$addr" "$auth" >&3
  read -r -t 5 _ code _ <&3 2>/dev/null || code=000
  echo "${code:-000}"
)

# run_registry NAME ADDR USER=CREDENTIALS_JSON…: config in /etc/airlock/NAME, data in
# $state_dir/NAME/data, pid file /run/airlock/NAME.pid, log /var/log/airlock-NAME.log; an htpasswd
# of exactly those logins. Ready when GET /v2/ is 401 without credentials and 200 with each login's.
run_registry() {
  local name=$1 addr=$2; shift 2
  local conf_dir=/etc/airlock/$name dir=$state_dir/$name pid_file=/run/airlock/$name.pid log=/var/log/airlock-$name.log
  local logins=("$@") login user file users restart=false stale=false changed pid basic
  users=$(for login in "${logins[@]}"; do echo "${login%%=*}"; done | sort | tr '\n' ' ')
  mkdir -p "$conf_dir" "$dir/data" /run/airlock
  chmod 0711 "$dir"   # the docker-registry user may reach data/, not list the credentials files
  [ "$(stat -c %U "$dir/data")" = docker-registry ] || chown -R docker-registry:docker-registry "$dir/data"
  chmod 0700 "$dir/data"
  local want_conf="version: 0.1
log:
  level: info
  fields:
    service: airlock-$name
storage:
  filesystem:
    rootdirectory: $dir/data
http:
  addr: $addr
  headers:
    X-Content-Type-Options: [nosniff]
auth:
  htpasswd:
    realm: airlock-$name
    path: $conf_dir/htpasswd"
  if [ "$(cat "$conf_dir/config.yml" 2>/dev/null)" != "$want_conf" ]; then
    printf '%s\n' "$want_conf" > "$conf_dir/config.yml"
    restart=true
  fi
  # bcrypt needs the helper (no htpasswd binary here); skipped when the htpasswd names exactly these
  # users and no credentials file is missing or newer than it. It never rewrites an existing password.
  [ -s "$conf_dir/htpasswd" ] && [ "$(cut -d: -f1 "$conf_dir/htpasswd" | sort | tr '\n' ' ')" = "$users" ] || stale=true
  for login in "${logins[@]}"; do
    file=${login#*=}
    [ -s "$file" ] && [ ! "$file" -nt "$conf_dir/htpasswd" ] || stale=true
  done
  if [ "$stale" = true ]; then
    changed=$("$repo/node_modules/.bin/tsx" "$repo/scripts/registry-htpasswd.ts" --users "$conf_dir/htpasswd" "${logins[@]}") \
      || die "could not write the logins of $name ($conf_dir/htpasswd and ${logins[*]})"
    [ "$changed" = changed ] && { say "$name: logins written for $users"; restart=true; }
  fi
  chown root:docker-registry "$conf_dir/htpasswd"
  chmod 0640 "$conf_dir/htpasswd"
  for login in "${logins[@]}"; do chmod 0600 "${login#*=}"; done

  # The pid from our pid file, only if that process is still this docker-registry.
  pid=$(cat "$pid_file" 2>/dev/null || true)
  if [ -n "$pid" ] && ! { tr '\0' ' ' < "/proc/$pid/cmdline"; } 2>/dev/null | grep -q "docker-registry serve $conf_dir/config.yml"; then pid=''; fi
  if [ "$restart" = true ] && [ -n "$pid" ]; then
    say "$name: config or logins changed: restarting it"
    kill "$pid"
    for _ in $(seq 1 100); do [ "$(registry_status "$addr")" = 000 ] && break; sleep 0.1; done
  fi
  if [ "$(registry_status "$addr")" = 000 ]; then
    say "starting docker-registry ($name) on $addr"
    nohup setpriv --reuid=docker-registry --regid=docker-registry --init-groups --no-new-privs --inh-caps=-all \
      /usr/bin/docker-registry serve "$conf_dir/config.yml" >>"$log" 2>&1 &
    echo $! > "$pid_file"
    for i in $(seq 1 100); do
      [ "$(registry_status "$addr")" != 000 ] && break
      [ "$i" -eq 100 ] && die "docker-registry ($name) did not answer on $addr in 10 s; see $log"
      sleep 0.1
    done
  fi
  [ "$(registry_status "$addr")" = 401 ] || die "the registry on $addr ($name) does not ask for credentials (GET /v2/ → $(registry_status "$addr"), want 401); is something else on that port? see $log"
  for login in "${logins[@]}"; do
    user=${login%%=*} file=${login#*=}
    basic=$(sed -n 's/.*"username": *"\([^"]*\)".*"password": *"\([^"]*\)".*/\1:\2/p' "$file" | tr -d '\n' | base64 -w0)
    [ "$(registry_status "$addr" "$basic")" = 200 ] || die "the registry on $addr ($name) refuses $user's credentials from $file; see $log"
  done
}

run_registry registry 127.0.0.1:5000 \
  "airlock-builder=$state_dir/registry/credentials.json" "airlock-consumer=$state_dir/registry/consumer.json"
run_registry registry-private 127.0.0.1:5001 \
  "airlock-builder=$state_dir/registry-private/builder.json" "security-team=$state_dir/registry-private/team.json"

say "ready"
