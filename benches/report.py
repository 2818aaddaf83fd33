#!/usr/bin/env python3
"""Markdown tables from the criterion results of the `codec` bench.

Usage: python3 benches/report.py [target/criterion]

Reads every `new/benchmark.json` + `new/estimates.json` under the criterion
directory, and prints one table per group: time per operation for each
implementation (criterion's point estimate: the slope when it has one, else
the mean), tern's ratio to each peer, and throughput in GB/s (10^9 bytes/s).
"""
import json
import os
import sys

IMPLS = ["tern", "rumqttc", "mqtt5-protocol"]
PEERS = IMPLS[1:]


def load(root):
    rows = {}
    for dirpath, _dirs, files in os.walk(root):
        if not dirpath.endswith(os.sep + "new") or "benchmark.json" not in files:
            continue
        with open(os.path.join(dirpath, "benchmark.json")) as f:
            b = json.load(f)
        with open(os.path.join(dirpath, "estimates.json")) as f:
            e = json.load(f)
        est = e.get("slope") or e["mean"]
        ns = est["point_estimate"]
        lo = est["confidence_interval"]["lower_bound"]
        hi = est["confidence_interval"]["upper_bound"]
        nbytes = (b.get("throughput") or {}).get("Bytes")
        rows[(b["group_id"], b["function_id"], b["value_str"])] = (ns, lo, hi, nbytes)
    return rows


def fmt_time(ns):
    if ns >= 1000:
        return f"{ns / 1000:.2f} µs"
    if ns >= 100:
        return f"{ns:.0f} ns"
    return f"{ns:.1f} ns"


def ratio(tern, peer):
    r = peer / tern if tern <= peer else tern / peer
    digits = 2 if r < 1.1 else 1
    if tern <= peer:
        return f"{r:.{digits}f}x faster"
    return f"**{r:.{digits}f}x slower**"


GROUP_ORDER = [
    "decode_publish_v3.1.1",
    "decode_publish_v5",
    "decode_publish_v5+props",
    "decode_connect",
    "decode_subscribe",
    "encode_publish_v3.1.1",
    "encode_publish_v5",
    "encode_publish_v5+props",
    "encode_connect",
    "encode_subscribe",
]


def case_key(case):
    # qos0/16B < qos0/256B < qos0/1KiB < ... ; v3.1.1 < v5
    parts = case.split("/")
    if len(parts) == 2:
        size = parts[1]
        n = int(size[:-3]) * 1024 if size.endswith("KiB") else int(size[:-1])
        return (parts[0], n)
    return (case, 0)


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "target/criterion"
    rows = load(root)
    # Only this bench's groups: other benches share target/criterion.
    groups = [g for g in GROUP_ORDER if any(gg == g for gg, _, _ in rows)]
    for g in groups:
        cases = sorted({c for gg, _, c in rows if gg == g}, key=case_key)
        print(f"\n#### `{g}`\n")
        head = "| case | " + " | ".join(IMPLS) + " | " + " | ".join(f"tern vs {p}" for p in PEERS) + " | tern GB/s | best peer GB/s |"
        print(head)
        print("|" + "---|" * (1 + len(IMPLS) + len(PEERS) + 2))
        for c in cases:
            vals = {i: rows.get((g, i, c)) for i in IMPLS}
            if not all(vals.values()):
                continue
            t = vals["tern"][0]
            nbytes = vals["tern"][3]
            cells = [fmt_time(vals[i][0]) for i in IMPLS]
            cells += [ratio(t, vals[p][0]) for p in PEERS]
            best = min(vals[p][0] for p in PEERS)
            cells += [f"{nbytes / t:.2f}", f"{nbytes / best:.2f}"]
            print(f"| {c} ({nbytes} B) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
