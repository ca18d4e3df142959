#!/bin/sh
# greet: the sample project's application. Usage: greet [NAME...]
greeting="Hello"

[ $# -gt 0 ] || set -- world
for name in "$@"; do
  echo "$greeting, $name!"
done
