#!/usr/bin/env bash
# Build airlock's base images locally (there is no registry to pull from), then run the
# gVisor (runsc) compatibility self-test on each and record which images pass.
#   airlock/base:busybox   busybox-static + a passwd with the unprivileged job user (seconds)
#   airlock/base:bookworm  a debootstrap minbase rootfs (minutes; rootfs tarball cached)
# Each image is rebuilt only when missing. The self-test result is keyed by image id.
set -euo pipefail
# --help prints the header above; it takes no argument. Builtins only (PATH may be empty here).
case "${1:-}" in
  -h|--help) while IFS= read -r line; do case $line in '#!'*) ;; '#'*) line=${line#\#}; printf '%s\n' "${line# }" ;; *) break ;; esac; done < "${BASH_SOURCE[0]:-/dev/null}"; exit 0 ;;
  '') ;;
  *) printf '%s: unknown argument %s (it takes none; --help says what it does)\n' "base-images" "$1" >&2; exit 2 ;;
esac
say() { printf 'base-images: %s\n' "$*" >&2; }
die() { printf 'base-images: error: %s\n' "$*" >&2; exit 1; }

docker_bin=/usr/bin/docker
state_dir=${AIRLOCK_STATE_DIR:-/var/lib/airlock}
cache_dir=${AIRLOCK_CACHE_DIR:-/var/cache/airlock}
mirror=${AIRLOCK_DEBIAN_MIRROR:-$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)}
mirror=${mirror:-http://deb.debian.org/debian}
mkdir -p "$state_dir" "$cache_dir"

# The job user every airlock image carries: uid/gid 1000, no shell privileges, no sudo.
add_job_user() {
  local root=$1
  grep -q '^airlock:' "$root/etc/passwd" 2>/dev/null || echo 'airlock:x:1000:1000:airlock job:/workspace:/bin/sh' >> "$root/etc/passwd"
  grep -q '^airlock:' "$root/etc/group" 2>/dev/null || echo 'airlock:x:1000:' >> "$root/etc/group"
  mkdir -p "$root/workspace" "$root/tmp" "$root/home/airlock"
  chmod 1777 "$root/tmp"
  chown 1000:1000 "$root/home/airlock"   # writable by the job user, were the root filesystem writable
}

# Bump when the recipe changes: an image without this label value is rebuilt.
BASE_VERSION=2

have_image() {
  [ "$("$docker_bin" image inspect -f '{{index .Config.Labels "org.airlock.base.version"}}' "$1" 2>/dev/null)" = "$BASE_VERSION" ]
}

# Remove a superseded image once its tag has moved (only if nothing else uses it).
drop_old() { [ -n "$1" ] && [ "$1" != "$("$docker_bin" image inspect -f '{{.Id}}' "$2")" ] && "$docker_bin" rmi "$1" >/dev/null 2>&1 || true; }

if ! have_image airlock/base:busybox; then
  old=$("$docker_bin" image inspect -f '{{.Id}}' airlock/base:busybox 2>/dev/null || true)
  say "building airlock/base:busybox from busybox-static"
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$tmp/bin" "$tmp/etc" "$tmp/proc" "$tmp/sys" "$tmp/dev"
  cp /bin/busybox "$tmp/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$tmp/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$tmp/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$tmp/etc/group"
  add_job_user "$tmp"
  tar --numeric-owner -C "$tmp" -c . | "$docker_bin" import \
    -c 'ENV PATH=/bin' -c 'WORKDIR /workspace' -c 'LABEL org.airlock.base=busybox' -c "LABEL org.airlock.base.version=$BASE_VERSION" - airlock/base:busybox >/dev/null
  rm -rf "$tmp"; trap - EXIT
  drop_old "$old" airlock/base:busybox
fi

if ! have_image airlock/base:bookworm; then
  old=$("$docker_bin" image inspect -f '{{.Id}}' airlock/base:bookworm 2>/dev/null || true)
  tarball="$cache_dir/bookworm-minbase-v$BASE_VERSION.tar"
  if [ ! -s "$tarball" ]; then
    say "debootstrap bookworm minbase from $mirror (a few minutes, cached afterwards)"
    root=$(mktemp -d "$cache_dir/rootfs.XXXXXX")
    debootstrap --variant=minbase bookworm "$root" "$mirror" >"$cache_dir/debootstrap.log" 2>&1 \
      || { rm -rf "$root"; die "debootstrap failed; see $cache_dir/debootstrap.log"; }
    add_job_user "$root"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar --numeric-owner -C "$root" -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
    rm -rf "$root"
  fi
  say "importing airlock/base:bookworm"
  "$docker_bin" import -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'WORKDIR /workspace' -c 'LABEL org.airlock.base=bookworm' -c "LABEL org.airlock.base.version=$BASE_VERSION" "$tarball" airlock/base:bookworm >/dev/null
  drop_old "$old" airlock/base:bookworm
fi

# ---- runsc compatibility self-test --------------------------------------------------------
# Debian's runsc (2022) answers statx with EINVAL, which breaks GNU coreutils ls/stat; busybox
# works. A policy may pick runsc only for an image whose id is listed here as passing.
compat="$state_dir/runsc-compat.json"
entries=()
for image in airlock/base:busybox airlock/base:bookworm; do
  id=$("$docker_bin" image inspect -f '{{.Id}}' "$image")
  if grep -q "\"$id\"" "$compat" 2>/dev/null; then
    entries+=("$(grep -o "\"$id\": *[a-z]*" "$compat")"); continue
  fi
  ok=false
  if timeout 60 "$docker_bin" run --rm --runtime runsc --network none --user 1000:1000 "$image" \
       sh -c 'ls -la / >/dev/null && stat / >/dev/null && cat /proc/self/status >/dev/null && echo airlock-selftest-ok' 2>/dev/null \
       | grep -q airlock-selftest-ok; then ok=true; fi
  say "runsc self-test $image: $ok"
  entries+=("\"$id\": $ok")
done
{ printf '{\n'; for i in "${!entries[@]}"; do printf '  %s%s\n' "${entries[$i]}" "$([ "$i" -lt $((${#entries[@]} - 1)) ] && echo ,)"; done; printf '}\n'; } > "$compat.part"
mv "$compat.part" "$compat"
