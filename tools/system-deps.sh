#!/usr/bin/env bash
# Install the Debian packages named on the command line when the programs they provide are
# missing. Run by `make test` (test programs) and `make bench` (benchmark programs).
# Arguments are PROGRAM=PACKAGE pairs, e.g. `aria2c=aria2 nginx=nginx`.
# As root with apt-get available it installs what is missing; otherwise it only reports, and
# the tests that need a missing program fail under CI=true (skip otherwise).
set -euo pipefail
missing=()
for pair in "$@"; do
    prog=${pair%%=*}
    pkg=${pair#*=}
    command -v "$prog" >/dev/null 2>&1 || [ -x "/usr/sbin/$prog" ] || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    # Tests start their own servers on 127.0.0.1; keep apt from starting daemons (nginx on :80).
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    echo "system-deps: missing Debian packages ${missing[*]} (run as root to install them)" >&2
fi
