#!/usr/bin/env bash
# Print the header comment of a script (lines 2 up to `set -euo pipefail`, without the "# "): its --help text.
#
#   bash scripts/print_usage.sh SCRIPT
#
# -h/--help prints this text; no SCRIPT, or one that is not a readable file, is an error (exit 2).
set -euo pipefail

header() { sed -n '2,/^set -euo pipefail/p' -- "$1" | sed -e '$d' -e 's/^# \{0,1\}//'; }

if [[ "$#" -ne 1 ]]; then
  header "${BASH_SOURCE[0]}" >&2
  exit 2
fi
case "$1" in
  -h | --help) header "${BASH_SOURCE[0]}" ;;
  *)
    if [[ ! -f "$1" || ! -r "$1" ]]; then
      echo "print_usage.sh: $1 is not a readable file" >&2
      exit 2
    fi
    header "$1"
    ;;
esac
