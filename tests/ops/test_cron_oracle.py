#!/usr/bin/env python3
"""test_cron_oracle.py - keel_cron_next against an independent oracle.

Usage: test_cron_oracle.py CRON_NEXT [SEED] [COUNT]

Generates seeded random crontab expressions (every syntax form: '*', values,
ranges, steps, a/n, lists, month and day names in random case, 7 for Sunday,
macros), as a structure first: the oracle computes each field's set from the
structure, never from the text keel parses. Each expression gets a zone
(UTC, zones with northern and southern DST, a 30-minute DST, no DST, a
half-hour offset) and start instants, some at random in 1900-2060 (past
tzdata's table, the POSIX footer decides), some a few hours around 2026's
offset changes of the zone. The oracle walks local dates with python3's
zoneinfo (its own TZif reader) and applies docs/cron.md's rules by brute
force: every matching local minute of a day is turned into instants with
fold=0 and fold=1 and a round trip says whether it exists once, twice or not
at all; a missing one of a fixed-time job runs at the first instant whose
local time is past it, found by bisection. Every disagreement is printed;
any fails the test.
"""
import random
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

FIELDS = [("minute", 0, 59), ("hour", 0, 23), ("dom", 1, 31), ("month", 1, 12), ("dow", 0, 7)]
MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
          "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
          "@hourly": "0 * * * *"}
ZONES = ["UTC", "Europe/Paris", "America/New_York", "Asia/Tokyo", "Australia/Sydney",
         "Australia/Lord_Howe", "Asia/Kolkata", "America/Sao_Paulo", "Europe/London"]
HORIZON_DAYS = 10 * 366


def name(field, v, rng):
    """v as a number or, where allowed, a name in random case."""
    names = MONTHS if field == 3 else DAYS if field == 4 and v < 7 else None
    if names and rng.random() < 0.4:
        s = names[v - 1] if field == 3 else names[v]
        return "".join(c.upper() if rng.random() < 0.5 else c for c in s)
    return str(v)


def gen_field(field, rng):
    """(text, set) of one random field."""
    _, lo, hi = FIELDS[field]
    items, values = [], set()
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        kind = rng.choice(["star", "star", "value", "range", "step", "rangestep", "fromstep"])
        if kind == "star":
            a, b, step, text = lo, hi, 1, "*"
        elif kind == "step":
            a, b, step = lo, hi, rng.randint(1, min(hi - lo + 1, 12))
            text = "*/%d" % step
        elif kind == "value":
            a = b = rng.randint(lo, hi)
            step, text = 1, name(field, a, rng)
        elif kind == "fromstep":
            a, b, step = rng.randint(lo, hi), hi, rng.randint(1, min(hi - lo + 1, 10))
            text = "%s/%d" % (name(field, a, rng), step)
        else:
            a = rng.randint(lo, hi)
            b = rng.randint(a, hi)
            step = rng.randint(1, 6) if kind == "rangestep" else 1
            text = "%s-%s" % (name(field, a, rng), name(field, b, rng))
            if kind == "rangestep":
                text += "/%d" % step
        items.append(text)
        values.update(range(a, b + 1, step))
    if field == 4 and 7 in values:
        values.discard(7)
        values.add(0)
    return ",".join(items), values


def gen_expr(rng, near_dst=False):
    """(text, sets, flags) of a random expression or macro."""
    if rng.random() < 0.08:
        m = rng.choice(list(MACROS))
        texts = MACROS[m].split()
        sets = [set(range(lo, hi + 1)) if t == "*" else {int(t)}
                for t, (_, lo, hi) in zip(texts, FIELDS)]
        sets[4].discard(7)
        text = "".join(c.upper() if rng.random() < 0.3 else c for c in m)
    else:
        pairs = [gen_field(f, rng) for f in range(5)]
        if near_dst or rng.random() < 0.3:  # a job near the hours DST changes touch
            m = rng.choice([0, 15, 30, 59])
            if rng.random() < 0.7:  # fixed time; else every 20 minutes, a wildcard job
                pairs[0] = (name(0, m, rng), {m})
            else:
                pairs[0] = ("*/20", {0, 20, 40})
            if near_dst and rng.random() < 0.6:  # every day, so the change's day is one
                pairs[2] = ("*", set(range(1, 32)))
                pairs[3] = ("*", set(range(1, 13)))
                pairs[4] = ("*", set(range(0, 7)))
            h = rng.randint(0, 3)
            pairs[1] = (name(1, h, rng), {h})
        texts, sets = [p[0] for p in pairs], [p[1] for p in pairs]
        text = " ".join(texts)
    flags = {k: texts[i].startswith("*") for k, i in [("min", 0), ("hour", 1), ("dom", 2), ("dow", 4)]}
    return text, sets, flags


def day_matches(sets, flags, d):
    dom, dow = d.day in sets[2], (d.weekday() + 1) % 7 in sets[4]
    return dom and dow if flags["dom"] or flags["dow"] else dom or dow


def local_naive(u, z):
    return datetime.fromtimestamp(u, z).replace(tzinfo=None)


def gap_end(dt, z, lo, hi):
    """The first instant in (lo, hi] whose local time is past dt."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if local_naive(mid, z) > dt:
            hi = mid
        else:
            lo = mid
    return hi


STATS = {"gap": 0, "repeat_twice": 0, "repeat_once": 0}


def instants(dt, z, wild):
    """The slots of local minute dt under docs/cron.md's rules, as (instant, kind)."""
    u0 = int(dt.replace(tzinfo=z, fold=0).timestamp())
    u1 = int(dt.replace(tzinfo=z, fold=1).timestamp())
    exists = [u for u in sorted({u0, u1}) if local_naive(u, z) == dt]
    if len(exists) == 2:
        return [(exists[0], "repeat_once"), (exists[1], "repeat_twice")] if wild else [
            (exists[0], "repeat_once")]
    if exists:
        return [(exists[0], None)]
    if wild:
        return []
    return [(gap_end(dt, z, min(u0, u1) - 1, max(u0, u1)), "gap")]


def oracle(sets, flags, zone, after):
    z = ZoneInfo(zone) if zone != "UTC" else timezone.utc
    wild = flags["min"] or flags["hour"]
    hours, minutes = sorted(sets[1]), sorted(sets[0])
    d = local_naive(after, z).date() - timedelta(days=1)
    last = d + timedelta(days=HORIZON_DAYS + 2)
    best, kind = None, None
    # Local times more than a few hours before `after`'s (or after the best
    # so far) cannot give a better instant: no offset change is that large.
    margin = timedelta(hours=4)
    floor = local_naive(after, z) - margin
    while d <= last:
        if best is not None and d > local_naive(best, z).date() + timedelta(days=1):
            break
        if d.month in sets[3] and day_matches(sets, flags, d):
            for h in hours:
                for m in minutes:
                    dt = datetime(d.year, d.month, d.day, h, m)
                    if dt < floor:
                        continue
                    if best is not None and dt > local_naive(best, z) + margin:
                        break
                    for u, k in instants(dt, z, wild):
                        if u > after and u <= after + HORIZON_DAYS * 86400 and (
                                best is None or u < best):
                            best, kind = u, k
        d += timedelta(days=1)
    if kind:
        STATS[kind] += 1
    return -1 if best is None else best


def transitions_2026(zone):
    """Instants in 2026 where the zone's offset changes (hourly scan, then bisection)."""
    if zone == "UTC":
        return []
    z = ZoneInfo(zone)
    start = int(datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp())
    out, prev = [], z.utcoffset(datetime.fromtimestamp(start, timezone.utc))
    for u in range(start, start + 366 * 86400, 1800):
        off = z.utcoffset(datetime.fromtimestamp(u, timezone.utc))
        if off != prev:
            out.append(u)
            prev = off
    return out


def main():
    tool = sys.argv[1]
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 20261207
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 400
    rng = random.Random(seed)
    trans = {z: transitions_2026(z) for z in ZONES}
    lo_u = int(datetime(1900, 1, 1, tzinfo=timezone.utc).timestamp())
    hi_u = int(datetime(2060, 1, 1, tzinfo=timezone.utc).timestamp())
    cases = []
    for _ in range(count):
        text, sets, flags = gen_expr(rng)
        zone = rng.choice(ZONES)
        starts = [rng.randint(lo_u, hi_u)]
        if trans[zone]:
            t = rng.choice(trans[zone])
            starts += [t + rng.randint(-3 * 3600, 3 * 3600), t - 1, t + rng.choice([0, 59, 3599])]
        else:
            starts.append(rng.randint(lo_u, hi_u) // 60 * 60)
        for s in starts:
            cases.append((text, sets, flags, zone, s))
    # Then jobs at the hours DST changes touch, from every 20 minutes of the
    # three hours around one of 2026's changes of their zone.
    dst_zones = [z for z in ZONES if trans[z]]
    for _ in range(count // 4):
        text, sets, flags = gen_expr(rng, near_dst=True)
        zone = rng.choice(dst_zones)
        t = rng.choice(trans[zone])
        for k in range(-9, 10):
            cases.append((text, sets, flags, zone, t + k * 1200 - rng.choice([0, 1])))
    stdin = "".join("%s\t%d\t%s\n" % (c[3], c[4], c[0]) for c in cases)
    got = subprocess.run([tool], input=stdin, capture_output=True, text=True, check=True)
    lines = got.stdout.splitlines()
    assert len(lines) == len(cases), "cron_next answered %d of %d" % (len(lines), len(cases))
    bad = 0
    for (text, sets, flags, zone, s), line in zip(cases, lines):
        want = oracle(sets, flags, zone, s)
        if line != str(want):
            bad += 1
            fmt = lambda u: "-" if u in (-1, None) else datetime.fromtimestamp(
                u, timezone.utc).isoformat()
            print("MISMATCH %-20s after %d (%s) %r: keel %s (%s), oracle %d (%s)" % (
                zone, s, fmt(s), text, line, fmt(int(line)) if line.lstrip("-").isdigit()
                else "", want, fmt(want)))
    print("%d cases (%d expressions, seed %d), %d mismatches; answers at a gap's end %d, "
          "in a repeat's first pass %d, second pass %d" % (
              len(cases), count, seed, bad, STATS["gap"], STATS["repeat_once"],
              STATS["repeat_twice"]))
    # A run that never met a DST edge would prove nothing about them.
    if min(STATS.values()) == 0:
        print("the cases did not reach every DST rule: change the seed or the generator")
        return 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
