#!/bin/sh
# Install the npm packages of package-lock.json into node_modules/ from the registry airlock serves
# ($npm_config_registry: the CI's cache, or the trusted builder's verified files), each checked
# against its lockfile integrity first. A shell project's `npm ci`.
set -eu
jq -r '.packages | to_entries[] | select(.key != "") | [.key, .value.version, .value.integrity] | @tsv' package-lock.json |
  while IFS="$(printf '\t')" read -r path version integrity; do
    name=${path##*node_modules/}
    wget -q --no-proxy -O /tmp/pkg.tgz "${npm_config_registry}${name}/-/${name##*/}-${version}.tgz"
    got="sha512-$(sha512sum /tmp/pkg.tgz | cut -c1-128 | perl -ne 'chomp; print pack("H*", $_)' | base64 -w0)"
    [ "$got" = "$integrity" ] || { echo "deps: $name $version: integrity $got, the lockfile says $integrity" >&2; exit 1; }
    mkdir -p "$path" && tar -xzf /tmp/pkg.tgz -C "$path" --strip-components=1
    echo "deps: $name $version ($integrity)"
  done
