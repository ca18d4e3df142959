# Sourced by the bootstrap scripts: how they answer their arguments, and how they speak.
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"; script_setup NAME "${BASH_SOURCE[0]}" "$@"
# --help prints the script's header comment (the lines after the shebang, up to `set -euo`); any
# other argument is refused with exit 2 (they take none). Defines say (to stderr) and die (exit 1).
script_setup() {
  script_name=$1
  local file=$2
  shift 2
  case "${1:-}" in
    -h|--help) sed -n '2,/^set -euo/p' "$file" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    '') ;;
    *) printf '%s: unknown argument %s (it takes none; --help says what it does)\n' "$script_name" "$1" >&2; exit 2 ;;
  esac
}
say() { printf '%s: %s\n' "$script_name" "$*" >&2; }
die() { printf '%s: error: %s\n' "$script_name" "$*" >&2; exit 1; }
