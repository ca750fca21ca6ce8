"""Ratios of the decode bench against its JSON baselines, from the medians
criterion saved in the same run (target/criterion/<exchange>/<function>/new).

    cargo bench -p tokenscope --bench decode
    python3 tests/benches/ratios.py            # or: ratios.py path/to/target/criterion

`decode / json_value` is "decode costs N x a plain serde_json parse of the
same response JSON"; `decode / json_skim` compares with only validating it.
"""

import json
import pathlib
import sys

FUNCTIONS = ("decode", "json_value", "json_skim")


def median_ns(group: pathlib.Path, function: str):
    estimates = group / function / "new" / "estimates.json"
    if not estimates.exists():
        return None
    return json.loads(estimates.read_text())["median"]["point_estimate"]


def main() -> int:
    root = pathlib.Path(__file__).resolve().parents[2]
    criterion = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else root / "target" / "criterion"
    rows = []
    for group in sorted(p for p in criterion.iterdir() if p.is_dir()):
        ns = {f: median_ns(group, f) for f in FUNCTIONS}
        if None in ns.values():
            continue
        rows.append((group.name, ns))
    if not rows:
        print(f"no decode results under {criterion}: run `cargo bench -p tokenscope --bench decode`")
        return 1
    print(f"{'exchange':<24} {'decode us':>10} {'calls/s':>9} {'json_value us':>14} "
          f"{'json_skim us':>13} {'dec/value':>10} {'dec/skim':>9}")
    for name, ns in rows:
        print(f"{name:<24} {ns['decode'] / 1e3:>10.2f} {1e9 / ns['decode']:>9.0f} "
              f"{ns['json_value'] / 1e3:>14.2f} {ns['json_skim'] / 1e3:>13.2f} "
              f"{ns['decode'] / ns['json_value']:>10.2f} {ns['decode'] / ns['json_skim']:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
