"""Per-kernel totals from Nsight Compute's CSV (`ncu --csv --metrics gpu__time_duration.sum
--print-units base`): calls, total and mean duration by kernel name, most time first, with
the total divided by the number of forwards the run made (argv[2]), for device-check.sh."""
import collections
import csv
import sys

UNIT_NS = {"nsecond": 1.0, "ns": 1.0, "usecond": 1e3, "us": 1e3, "msecond": 1e6, "ms": 1e6, "second": 1e9, "s": 1e9}


def rows(path):
    with open(path, newline="") as f:
        lines = [l for l in f if l.startswith('"')]  # ncu's own log lines start with ==
    for r in csv.DictReader(lines):
        if r.get("Metric Name") == "gpu__time_duration.sum":
            yield r


def main():
    path, forwards = sys.argv[1], float(sys.argv[2])
    by = collections.defaultdict(lambda: [0, 0.0])
    for r in rows(path):
        ns = float(r["Metric Value"].replace(",", "")) * UNIT_NS.get(r.get("Metric Unit", "ns"), 1.0)
        name = r["Kernel Name"].split("(")[0]
        by[name][0] += 1
        by[name][1] += ns
    if not by:
        print("no kernel durations in", path)
        return
    total = sum(ns for _, ns in by.values())
    print(f"| kernel | calls | µs total | µs mean | µs per forward ({forwards:.0f}) | % |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, (calls, ns) in sorted(by.items(), key=lambda kv: -kv[1][1]):
        print(f"| {name} | {calls} | {ns / 1e3:.1f} | {ns / calls / 1e3:.2f} | {ns / forwards / 1e3:.1f} | {100 * ns / total:.1f} |")
    print(f"kernels in all: {total / 1e3:.1f} µs, {total / forwards / 1e3:.1f} µs per forward")


if __name__ == "__main__":
    main()
