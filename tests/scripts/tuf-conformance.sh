#!/usr/bin/env bash
# Run the TUF conformance suite (github.com/theupdateframework/tuf-conformance) against a TUF
# client that speaks the suite's client-under-test CLI (init / refresh / download), then print
# a summary. A developer's tool: not part of CI nor of `cargo xtask test`. About 4 minutes.
#
#   tests/scripts/tuf-conformance.sh CLIENT [SUITE_DIR] [-- PYTEST_ARGS...]
#
# CLIENT: the client binary. SUITE_DIR: a checkout of the suite (default
# /work/tufc/tuf-conformance). The Python venv is $TUFC_VENV (default /work/tufc/venv), made and
# filled from the suite's pyproject.toml (PyPI) when missing or stale; `faketime` (Debian) is
# installed when missing. Expected failures: $TUFC_XFAILS, else CLIENT.xfails if it exists, else
# for our own client (aperture-tuf-client) the committed device/client/tuf-conformance.xfails
# (one test name a line, `#` lines are comments). The JSON report and the repository dumps go to
# $TUFC_OUT (default /tmp/tuf-conformance). Example: ... CLIENT -- -k test_faketime -rA
set -euo pipefail

usage="usage: $0 CLIENT [SUITE_DIR] [-- PYTEST_ARGS...]"
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
client=$(realpath "${1:?$usage}")
shift
suite=/work/tufc/tuf-conformance
if [[ $# -gt 0 && $1 != -- ]]; then suite=$1; shift; fi
if [[ ${1:-} == -- ]]; then shift; fi
suite=$(realpath "$suite")
venv=${TUFC_VENV:-/work/tufc/venv}
out=${TUFC_OUT:-/tmp/tuf-conformance}
[[ -x $client ]] || { echo "not an executable: $client" >&2; exit 2; }
[[ -f $suite/pyproject.toml && -d $suite/tuf_conformance ]] ||
    { echo "not a tuf-conformance checkout: $suite" >&2; exit 2; }

# Debian tools, only when missing (the suite runs `faketime` for its expiry tests).
need=()
command -v faketime >/dev/null || need+=(faketime)
python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
if [[ ${#need[@]} -gt 0 ]]; then
    sudo=; [[ $EUID -eq 0 ]] || sudo=sudo
    $sudo apt-get install -y "${need[@]}" || { $sudo apt-get update && $sudo apt-get install -y "${need[@]}"; }
fi

# The venv, (re)filled when the suite's pinned requirements changed.
[[ -x $venv/bin/python ]] || python3 -m venv "$venv"
stamp=$(sha256sum "$suite/pyproject.toml" | cut -d' ' -f1)
if [[ $(cat "$venv/.tuf-conformance" 2>/dev/null) != "$stamp" ]]; then
    "$venv/bin/python" -m pip install -q -e "$suite"
    echo "$stamp" >"$venv/.tuf-conformance"
fi

# faketime moves the clock through LD_PRELOAD: a static binary never sees it.
if [[ $(head -c2 "$client") != '#!' ]] && ! ldd "$client" >/dev/null 2>&1; then
    echo "warning: $client is not dynamically linked; faketime cannot set its clock" >&2
fi

# The suite splits --entrypoint on spaces and reads ENTRYPOINT.xfails: give it a plain path.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ln -s "$client" "$work/client"
if [[ -n ${TUFC_XFAILS:-} ]]; then
    xfails=$TUFC_XFAILS
    [[ -f $xfails ]] || { echo "TUFC_XFAILS: no such file: $xfails" >&2; exit 2; }
elif [[ -f $client.xfails ]]; then
    xfails=$client.xfails
elif [[ $(basename "$client") == aperture-tuf-client ]]; then
    xfails=$repo/device/client/tuf-conformance.xfails
else
    xfails=
fi
if [[ -n $xfails ]]; then
    ln -s "$(realpath "$xfails")" "$work/client.xfails"
    echo "expected failures: $xfails"
fi

mkdir -p "$out"
rm -rf "$out/dump" "$out/report.json"
rc=0
(cd "$suite" && PATH=$venv/bin:$PATH python -m pytest tuf_conformance -p no:cacheprovider -q -rfE \
    --entrypoint "$work/client" --repository-dump-dir "$out/dump" \
    --json-report --json-report-file "$out/report.json" "$@") || rc=$?

[[ -f $out/report.json ]] && "$venv/bin/python" - "$out/report.json" "$client" <<'EOF'
import collections, json, sys
report = json.load(open(sys.argv[1]))
tests = report.get("tests", [])
counts = collections.Counter(t["outcome"] for t in tests)
print(f"\ntuf-conformance against {sys.argv[2]}: "
      + ", ".join(f"{n} {o}" for o, n in sorted(counts.items()))
      + f" (of {len(tests)}) in {report['duration']:.0f} s")
for t in tests:
    if t["outcome"] != "passed":
        print(f"  {t['outcome']:8} {t['nodeid'].removeprefix('tuf_conformance/')}")
EOF
echo "report: $out/report.json; repositories as served: $out/dump"
exit "$rc"
