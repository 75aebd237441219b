#!/usr/bin/env bash
# check-layers.sh - the layer rule of DESIGN.md, checked on every build's ctest
# (test check_layers) instead of kept by habit.
#
#   scripts/check-layers.sh SRCDIR OBJECT...   check the tree and libkeel's objects
#   scripts/check-layers.sh --self-test        plant violations in a scratch tree
#                                              and show each one is caught
#
# The layers, lowest first, are the folders under src/: rt < otp < ops < http
# (then es < jobs when they come). A layer may use its own layer and those
# below it, never one above. Four checks, each failing with the file, the name
# and both layers:
#
# 1. Symbols. Every object file of libkeel (the .o of src/<layer>/*.c, as CMake
#    hands them over with $<TARGET_OBJECTS:keel_objs>) is read with nm: what it
#    defines says which layer owns a symbol, what it leaves undefined says what
#    it uses. An object of rt that references a symbol defined in otp, ops or
#    http fails, and so on up. This sees what the compiler kept: calls, data,
#    and the address of a function taken for a callback.
# 2. Includes. Every #include line of src/<layer>/*.c and *.h, and of
#    include/keel/*.h, is mapped to the layer that owns the header:
#    include/keel/<module>.h through HEADER_LAYERS below (a new public header
#    must be added there, or the check fails naming it), "<layer>/x.h" to its
#    folder. Including a higher layer's header fails, and so does the umbrella
#    keel.h anywhere in src/: a source file names the headers it uses.
# 3. Private prototypes. A .c file under src/ declares no prototype of a keel
#    function it does not define (nor any extern): names one file defines and
#    another calls are declared once, in the layer's internal header
#    (rt/internal.h, ops/ops_internal.h, http/http_internal.h, ...). Public
#    headers declare no keel__ name.
# 4. Sanity: every layer folder that has .c files has objects here, and the
#    objects reference each other at all (a check that read nothing passes
#    nothing).
#
# A real dependency upwards is fixed by moving the code down, or by inverting
# it with a hook the higher layer installs (keel_gs_set_context_hooks: otp's
# gen_server runs ops' log-context functions without knowing ops).
set -euo pipefail

LAYERS=(rt otp ops http es jobs)

# include/keel/<module>.h -> the layer whose folder implements it.
HEADER_LAYERS="error:rt runtime:rt process:rt message:rt timer:rt io:rt
  registry:otp table:otp gen_server:otp supervisor:otp task:otp application:otp
  gen_statem:otp port:otp
  config:ops log:ops metrics:ops sysinfo:ops health:ops alerts:ops observer:ops json:ops
  cron:ops
  trace:ops trace_export:http
  http:http service:http http_client:http alert_sink:http
  eventstore:es subscription:es aggregate:es
  jobs:jobs"

rank() {
  local i
  for i in "${!LAYERS[@]}"; do
    [[ ${LAYERS[$i]} == "$1" ]] && echo "$i" && return
  done
  echo -1
}

NM=${NM:-nm}
nviol=0
violation() {
  echo "check-layers: $*" >&2
  nviol=$((nviol + 1))
}

# ---- 1. symbols ----------------------------------------------------------------
# Two nm runs over all objects ("file: symbol type ..."), one awk to compare.
check_symbols() {
  local objs=() o out kind a b c
  for o in "$@"; do [[ $o == *.o ]] && objs+=("$o"); done
  ((${#objs[@]} > 0)) || return 0
  out=$({
    "$NM" -A -P -g --defined-only "${objs[@]}" | sed 's/^/D /'
    "$NM" -A -P -u "${objs[@]}" | sed 's/^/U /'
  } | awk -v order="${LAYERS[*]}" '
    function below(l,   i, o) { o = a[1]; for (i = 2; i <= rank[l]; i++) o = o ", " a[i]; return o }
    BEGIN { n = split(order, a, " "); for (i = 1; i <= n; i++) rank[a[i]] = i }
    {
      # $2 is "<builddir>/.../src/<layer>/<file>.o:"; the layer is the folder
      # that holds the object, the source is src/<layer>/<file>.
      path = $2; sub(/:$/, "", path)
      if (!match(path, /\/src\/[a-z0-9_]+\/[^\/]+\.o$/)) next
      src = substr(path, RSTART + 1); sub(/\.o$/, "", src)
      layer = src; sub(/^src\//, "", layer); sub(/\/.*/, "", layer)
      if (!(layer in rank)) next
      if (!(src in objs)) { objs[src] = layer; nobj++; have[layer] = 1 }
      if ($1 == "D") { if ($4 != "U") { deflayer[$3] = layer; deffile[$3] = src } }
      else { nu++; ufile[nu] = src; ulayer[nu] = layer; usym[nu] = $3 }
    }
    END {
      for (i = 1; i <= nu; i++) {
        s = usym[i]
        if (!(s in deflayer)) continue
        cross++
        if (rank[deflayer[s]] > rank[ulayer[i]])
          printf "V %s (%s) uses %s, defined in %s (%s): %s may use only %s\n", ufile[i], ulayer[i], s, deffile[s], deflayer[s], ulayer[i], below(ulayer[i])
      }
      for (l in have) printf "L %s\n", l
      printf "N %d %d\n", nobj, cross
    }')
  while read -r kind a; do
    case $kind in
    V) violation "$a" ;;
    L) OBJ_LAYERS+=" $a " ;;
    N) read -r NOBJ NCROSS <<<"$a" ;;
    esac
  done <<<"$out"
}

# ---- 2. includes ---------------------------------------------------------------
# One awk pass over every source and public header.
check_includes() {
  local files=() out
  local f
  for f in src/*/*.c src/*/*.h include/keel/*.h; do [[ -e $f ]] && files+=("$f"); done
  NINC=${#files[@]}
  ((NINC > 0)) || return 0
  out=$(awk -v order="${LAYERS[*]}" -v map="$(echo $HEADER_LAYERS)" '
    function below(l,   i, o) { o = a[1]; for (i = 2; i <= rank[l]; i++) o = o ", " a[i]; return o }
    BEGIN {
      n = split(order, a, " "); for (i = 1; i <= n; i++) rank[a[i]] = i
      m = split(map, kv, " "); for (i = 1; i <= m; i++) { split(kv[i], p, ":"); hl[p[1]] = p[2] }
    }
    FNR == 1 {
      layer = ""; pub = 0
      if (FILENAME ~ /^src\//) { layer = FILENAME; sub(/^src\//, "", layer); sub(/\/.*/, "", layer) }
      else {
        pub = 1; mod = FILENAME; sub(/.*\//, "", mod); sub(/\.h$/, "", mod)
        if (mod in hl) layer = hl[mod]
        else nextfile # reported below, empty or not
      }
      if (!(layer in rank)) nextfile
    }
    pub && /(^|[^a-zA-Z0-9_])keel__[a-z0-9_]/ && !warned[FILENAME]++ {
      printf "%s:%d names a private keel__ identifier: move it to src/%s/ and its internal header\n", FILENAME, FNR, layer
    }
    /^[ \t]*#[ \t]*include[ \t]*[<"]/ {
      inc = $0; sub(/^[ \t]*#[ \t]*include[ \t]*[<"]/, "", inc); sub(/[">].*/, "", inc)
      target = ""
      if (inc == "keel.h") {
        if (!pub) printf "%s:%d (%s) includes the umbrella keel.h, every layer'"'"'s headers: name the headers of %s it uses\n", FILENAME, FNR, layer, below(layer)
        next
      } else if (inc ~ /^keel\/[a-z0-9_]+\.h$/) {
        mod = inc; sub(/^keel\//, "", mod); sub(/\.h$/, "", mod)
        if (!(mod in hl)) { printf "%s:%d includes %s, which no layer owns: add it to HEADER_LAYERS in scripts/check-layers.sh\n", FILENAME, FNR, inc; next }
        target = hl[mod]
      } else if (inc ~ /^[a-z0-9_]+\//) {
        target = inc; sub(/\/.*/, "", target)
        if (!(target in rank)) next
      } else next
      if (rank[target] > rank[layer])
        printf "%s:%d (%s) includes %s (%s): %s may use only %s\n", FILENAME, FNR, layer, inc, target, layer, below(layer)
    }' "${files[@]}")
  if [[ -n $out ]]; then
    while IFS= read -r f; do violation "$f"; done <<<"$out"
  fi
  local mod
  for f in include/keel/*.h; do
    [[ -e $f ]] || continue
    mod=${f##*/}
    mod=${mod%.h}
    if [[ " $(echo $HEADER_LAYERS) " != *" $mod:"* ]]; then
      violation "$f: no layer owns this public header: add it to HEADER_LAYERS in scripts/check-layers.sh"
    fi
  done
}

# ---- 3. private prototypes in .c files -------------------------------------------
# A file-scope declaration starts in column 0 (clang-format indents bodies and
# continuation lines); a prototype is one that reaches ';' before any '{' or
# '='. Reported when the file does not define that function itself.
check_prototypes() {
  local files=() f out
  for f in src/*/*.c; do [[ -e $f ]] && files+=("$f"); done
  ((${#files[@]} > 0)) || return 0
  out=$(awk '
    function flush(   name, br, sc) {
      if (match(stmt, /keel_[a-zA-Z0-9_]*[ \t]*\(/)) {
        name = substr(stmt, RSTART, RLENGTH); sub(/[ \t]*\($/, "", name)
        br = index(stmt, "{"); sc = index(stmt, ";")
        if (br && (!sc || br < sc)) defined[name] = 1
        else if (sc && stmt !~ /=/ && !(name in protos)) protos[name] = start
      }
      stmt = ""
    }
    function report(   p) {
      for (p in protos)
        if (!(p in defined))
          printf "%s:%d declares %s, which it does not define: declare it in the layer'"'"'s internal header\n", file, protos[p], p
      for (p in protos) delete protos[p]
      for (p in defined) delete defined[p]
    }
    FNR == 1 { if (file != "") report(); file = FILENAME; stmt = "" }
    {
      if (stmt != "") { stmt = stmt " " $0; if ($0 ~ /[;{]/) flush(); next }
      if ($0 ~ /^extern[ \t]/) {
        printf "%s:%d declares an extern in a .c file: declare it in the layer'"'"'s internal header\n", FILENAME, FNR
        next
      }
      if ($0 ~ /^(static|typedef|#|\/|\*|[ \t]|}|$)/) next
      if ($0 !~ /keel_[a-zA-Z0-9_]*[ \t]*\(/) next
      stmt = $0; start = FNR
      if ($0 ~ /[;{]/) flush()
    }
    END { if (file != "") report() }' "${files[@]}")
  if [[ -n $out ]]; then
    while IFS= read -r f; do violation "$f"; done <<<"$out"
  fi
}

run_check() {
  local srcdir=$1
  shift
  cd "$srcdir"
  OBJ_LAYERS="" NOBJ=0 NCROSS=0 NINC=0
  check_symbols "$@"
  check_includes
  check_prototypes
  # ---- 4. sanity ----
  local d l
  for d in src/*/; do
    l=$(basename "$d")
    [[ $(rank "$l") -ge 0 ]] || continue
    compgen -G "src/$l/*.c" >/dev/null || continue
    if [[ $OBJ_LAYERS != *" $l "* ]]; then
      violation "no object file of src/$l/ was given (pass \$<TARGET_OBJECTS:keel_objs>)"
    fi
  done
  if ((NCROSS == 0)); then
    violation "the objects reference nothing across files: nm read nothing useful"
  fi
  if ((nviol > 0)); then
    echo "check-layers: $nviol violation(s) of the layer rule (DESIGN.md, Layers: ${LAYERS[*]}, each using only those before it). Move the code to the lowest layer that needs it, or invert the dependency with a hook (see keel_gs_set_context_hooks)." >&2
    return 1
  fi
  echo "check-layers: ok ($NOBJ objects, $NCROSS references across files, $NINC sources and headers; private prototypes in internal headers)"
}

# ---- --self-test: a scratch tree with one violation of each kind ---------------
self_test() {
  local t cc=${CC:-cc} out rc fail=0
  t=$(mktemp -d)
  trap 'rm -rf "$t"' RETURN
  mkdir -p "$t/src/rt" "$t/src/ops" "$t/include/keel" "$t/obj/src/rt" "$t/obj/src/ops"
  cat >"$t/include/keel/log.h" <<'EOF'
int keel_log_thing(void);
EOF
  cat >"$t/include/keel/process.h" <<'EOF'
int keel_low(void);
EOF
  cat >"$t/src/rt/internal.h" <<'EOF'
#include "keel/process.h"
int keel__low_helper(void);
EOF
  cat >"$t/src/rt/low.c" <<'EOF'
#include "rt/internal.h"
int keel__low_helper(void) { return 1; }
int keel_low(void) { return keel__low_helper(); }
EOF
  cat >"$t/src/ops/high.c" <<'EOF'
#include "keel/log.h"
#include "rt/internal.h"
int keel_log_thing(void) { return keel_low() + keel__low_helper(); }
EOF
  build() {
    local f
    for f in low high; do
      local l=rt
      [[ $f == high ]] && l=ops
      "$cc" -c -I"$t/include" -I"$t/src" "$t/src/$l/$f.c" -o "$t/obj/src/$l/$f.c.o"
    done
  }
  build
  if ! out=$(run_check "$t" "$t"/obj/src/*/*.o 2>&1); then
    echo "self-test: a clean tree failed:"$'\n'"$out" >&2
    return 1
  fi
  # Plant: rt calls ops, includes an ops header, declares a prototype ad hoc.
  cat >"$t/src/rt/low.c" <<'EOF'
#include "rt/internal.h"
#include "keel/log.h"
int keel_other(void);
int keel__low_helper(void) { return keel_other(); }
int keel_low(void) { return keel__low_helper() + keel_log_thing(); }
EOF
  cat >>"$t/src/ops/high.c" <<'EOF'
int keel_other(void) { return 2; }
EOF
  build
  nviol=0
  rc=0
  out=$( (run_check "$t" "$t"/obj/src/*/*.o) 2>&1) || rc=$?
  local want
  for want in \
    "src/rt/low.c (rt) uses keel_log_thing, defined in src/ops/high.c (ops): rt may use only rt" \
    "src/rt/low.c:2 (rt) includes keel/log.h (ops): rt may use only rt" \
    "src/rt/low.c:3 declares keel_other, which it does not define"; do
    if [[ $out != *"$want"* ]]; then
      echo "self-test: missed: $want" >&2
      fail=1
    fi
  done
  if ((rc == 0)); then
    echo "self-test: the check passed a tree with violations" >&2
    fail=1
  fi
  if ((fail)); then
    echo "$out" >&2
    return 1
  fi
  echo "check-layers self-test: a clean tree passes; planted upward call, upward include and ad hoc prototype are each reported:"
  echo "$out" | sed 's/^/  | /'
}

if [[ ${1:-} == --self-test ]]; then
  self_test
  exit
fi
if (($# < 2)); then
  echo "usage: $0 SRCDIR OBJECT... | $0 --self-test" >&2
  exit 2
fi
run_check "$@"
