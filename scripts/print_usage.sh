#!/usr/bin/env bash
# Print the header comment of a script (lines 2 up to `set -euo pipefail`, without the "# "): its --help text.
#
#   bash scripts/print_usage.sh SCRIPT
set -euo pipefail

sed -n '2,/^set -euo pipefail/p' "$1" | sed -e '$d' -e 's/^# \{0,1\}//'
