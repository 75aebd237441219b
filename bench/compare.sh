#!/usr/bin/env bash
# Compare keel's benchmark results with the BEAM's.
#
# usage: bench/compare.sh KEEL_RESULTS.jsonl BEAM_RESULTS.jsonl
# (ANCHOR=name in the environment renames the other side's column, e.g. pino.)
#
# Each file holds JSON lines of the form
#   {"bench": "NAME", "unit": "UNIT", "value": NUMBER}
# (other lines are ignored; when a bench appears twice in one file the last
# line wins). Prints one row per bench: its unit, whether lower or higher is
# better (units starting with ns/us/ms/s or bytes: lower; units ending in /s:
# higher), both values, keel/BEAM, and "keel better by": the factor by which
# keel beats the BEAM (above 1: keel is better, below 1: the BEAM is).
# A bench present on one side only shows "-" for the other.
# Uses jq when it is installed, a small awk parser otherwise.
set -euo pipefail

prog="bench/compare.sh"

usage() {
    echo "usage: $prog KEEL_RESULTS.jsonl BEAM_RESULTS.jsonl" >&2
    exit 2
}

case "${1:-}" in
    -h|--help) sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
esac
[ "$#" -eq 2 ] || usage
for f in "$1" "$2"; do
    if [ ! -r "$f" ] || [ -d "$f" ]; then
        echo "$prog: cannot read '$f'" >&2
        exit 1
    fi
done

# to_tsv SIDE FILE: one "SIDE<TAB>bench<TAB>unit<TAB>value" line per result.
to_tsv() {
    if command -v jq >/dev/null 2>&1; then
        jq -R -r --arg side "$1" '
            fromjson?
            | select(type == "object" and (.bench | type) == "string"
                     and (.value | type) == "number")
            | [$side, .bench, (.unit // "" | tostring), (.value | tostring)]
            | @tsv' "$2"
    else
        awk -v side="$1" '
            function field(line, key, valre,    s) {
                if (!match(line, "\"" key "\"[ \t]*:[ \t]*" valre)) return ""
                s = substr(line, RSTART, RLENGTH)
                sub(/^"[^"]*"[ \t]*:[ \t]*/, "", s)
                gsub(/"/, "", s)
                return s
            }
            {
                bench = field($0, "bench", "\"[^\"]*\"")
                value = field($0, "value", "-?[0-9][0-9.eE+-]*")
                if (bench == "" || value == "") next
                print side "\t" bench "\t" field($0, "unit", "\"[^\"]*\"") "\t" value
            }' "$2"
    fi
}

{ to_tsv keel "$1"; to_tsv beam "$2"; } | awk -v anchor="${ANCHOR:-BEAM}" -F '\t' '
function abs(x) { return x < 0 ? -x : x }
# 1234567.8 -> "1,234,568"; 229.3 -> "229.3"; 4.567 -> "4.57"
function fmt(v,    s, out, neg) {
    if (abs(v) >= 1000) {
        neg = v < 0; s = sprintf("%.0f", abs(v)); out = ""
        while (length(s) > 3) {
            out = "," substr(s, length(s) - 2) out
            s = substr(s, 1, length(s) - 3)
        }
        return (neg ? "-" : "") s out
    }
    if (abs(v) >= 100) return sprintf("%.1f", v)
    if (abs(v) >= 1 || v == 0) return sprintf("%.2f", v)
    return sprintf("%.3g", v)
}
function fmtratio(r) {
    if (r >= 100) return sprintf("%.0f", r)
    if (r >= 10) return sprintf("%.1f", r)
    if (r >= 0.01) return sprintf("%.2f", r)
    return sprintf("%.2g", r)
}
function direction(unit) {
    if (unit ~ /\/s$/) return "higher"
    if (unit ~ /^(ns|us|ms|s|bytes|B|KiB|MiB|kB|MB)(\/|$)/) return "lower"
    return "?"
}
{
    side = $1; b = $2
    if (!(b in seen)) { seen[b] = 1; order[++n] = b; first[b] = side }
    unit[side, b] = $3; val[side, b] = $4 + 0; has[side, b] = 1
}
END {
    if (n == 0) { print "bench/compare.sh: no results in either file" > "/dev/stderr"; exit 1 }
    # keel benches first (in keel file order), then the BEAM-only ones.
    rows = 0
    for (pass = 1; pass <= 2; pass++)
        for (i = 1; i <= n; i++) {
            b = order[i]
            if ((pass == 1) != (first[b] == "keel")) continue
            k = has["keel", b]; e = has["beam", b]
            u = k ? unit["keel", b] : unit["beam", b]
            mismatch = k && e && unit["keel", b] != unit["beam", b]
            if (mismatch) { u = unit["keel", b] " vs " unit["beam", b]; nmismatch++ }
            dir = mismatch ? "?" : direction(u)
            kv = k ? fmt(val["keel", b]) : "-"
            ev = e ? fmt(val["beam", b]) : "-"
            ratio = "-"; better = "-"
            if (k && e && !mismatch && val["beam", b] != 0) {
                r = val["keel", b] / val["beam", b]
                ratio = fmtratio(r)
                if (dir == "lower" && r != 0) better = fmtratio(1 / r) "x"
                if (dir == "higher") better = fmtratio(r) "x"
            }
            rows++
            cell[rows, 1] = b; cell[rows, 2] = u; cell[rows, 3] = dir
            cell[rows, 4] = kv; cell[rows, 5] = ev
            cell[rows, 6] = ratio; cell[rows, 7] = better
        }
    split("bench|unit|better|keel|" anchor "|keel/" anchor "|keel better by", head, "|")
    ncol = 7
    for (c = 1; c <= ncol; c++) width[c] = length(head[c])
    for (r = 1; r <= rows; r++)
        for (c = 1; c <= ncol; c++)
            if (length(cell[r, c]) > width[c]) width[c] = length(cell[r, c])
    # text columns left-aligned, numbers right-aligned
    for (c = 1; c <= ncol; c++) left[c] = (c <= 3)
    line = ""; rule = ""
    for (c = 1; c <= ncol; c++) {
        line = line (c > 1 ? "  " : "") sprintf("%" (left[c] ? "-" : "") width[c] "s", head[c])
        dash = sprintf("%" width[c] "s", ""); gsub(/ /, "-", dash)
        rule = rule (c > 1 ? "  " : "") dash
    }
    print line; print rule
    for (r = 1; r <= rows; r++) {
        line = ""
        for (c = 1; c <= ncol; c++)
            line = line (c > 1 ? "  " : "") sprintf("%" (left[c] ? "-" : "") width[c] "s", cell[r, c])
        sub(/ +$/, "", line)
        print line
    }
    print ""
    print "keel better by: above 1 keel is better, below 1 " anchor " is."
    if (nmismatch) print "note: " nmismatch " bench(es) have different units on the two sides; not compared."
}'
