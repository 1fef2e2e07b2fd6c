"""Run the benchmark suite: every figure beside its anchor and goal, into bench/results.json and
a table on the terminal.

Run: .venv/bin/python bench/run.py [--quick] [--only NAME] [--fleet N]   (or `make bench`)
`--only NAME` replaces that module's figures in the results file and keeps the others (each
figure carries the date it was measured); `--markdown` prints the README's table of it.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: `bench` is a folder beside `agent`
    sys.path.insert(0, str(ROOT))

from bench.common import Figure  # noqa: E402

# Every bench module, in the order the table shows them; each has figures(quick) -> list[Figure].
MODULES = ("pipeline", "memory", "features", "wire", "drain", "buffer", "footprint", "fleet")
RESULTS = ROOT / "bench" / "results.json"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu
            )
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "mosquitto": mosquitto_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def mosquitto_version() -> str | None:
    binary = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None
    )
    if binary is None:
        return None
    try:  # `mosquitto -h` prints "mosquitto version 2.0.11" and exits 3
        out = subprocess.run([binary, "-h"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = out.splitlines()[0] if out else ""
    return first.rsplit(" ", 1)[-1] if "version" in first else None


def load(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"bench.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"bench.{name}":
            raise  # the module is there but needs something missing: that is a bug to show
        print(f"bench/{name}.py: not there yet, skipped", file=sys.stderr)
        return None


def number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    if abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif value == int(value):
        text = f"{value:.0f}"
    else:
        text = f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return f"{text} {unit}".strip()


def table(figures: list[Figure]) -> str:
    rows = [("figure", "value", "anchor", "ratio", "goal", "met")]
    for f in figures:
        anchor = f"{number(f['anchor_value'], f['unit'])} ({f['anchor']})" if f["anchor"] else "—"
        ratio = "—" if f["ratio"] is None else f"{f['ratio']:.2f}"
        met = "—" if f["met"] is None else "✓" if f["met"] else "✗"
        rows.append((f["name"], number(f["value"], f["unit"]), anchor, ratio, f["goal"], met))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    """The README's table of `results`: the same columns as the terminal's."""
    lines = [
        "| figure | value | anchor (same run) | ratio | goal | met |",
        "|---|---|---|---|---|---|",
    ]
    for f in results["figures"]:
        anchor = f"{number(f['anchor_value'], f['unit'])} ({f['anchor']})" if f["anchor"] else "—"
        ratio = "—" if f["ratio"] is None else f"{f['ratio']:.2f}"
        met = "—" if f["met"] is None else "✓" if f["met"] else "✗"
        cells = (f["name"], number(f["value"], f["unit"]), anchor, ratio, f["goal"], met)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def merged(output: Path, fresh: dict[str, Any], ran: tuple[str, ...]) -> dict[str, Any]:
    """`fresh` with the figures of the modules it did not run kept from `output`, in the
    table's order: `--only NAME` updates one module's figures, not the whole file."""
    try:
        old = json.loads(output.read_text())
    except (OSError, ValueError):
        return fresh
    if old.get("quick") != fresh["quick"]:
        return fresh
    kept = [f for f in old.get("figures", []) if f.get("module") not in ran]
    figures = kept + fresh["figures"]
    figures.sort(key=lambda f: MODULES.index(f["module"]) if f["module"] in MODULES else 99)
    return {**fresh, "figures": figures}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--only", choices=MODULES, help="run this bench module only")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where results go (JSON)")
    parser.add_argument(
        "--fleet", type=int, metavar="N", help="agents in bench/fleet.py (200; 5 with --quick)"
    )
    parser.add_argument(
        "--markdown", action="store_true", help="print the README table of --output; run nothing"
    )
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.output.read_text())))
        return 0

    results: dict[str, Any] = {"machine": machine(), "quick": args.quick, "figures": []}
    figures: list[Figure] = []
    ran = (args.only,) if args.only else MODULES
    for name in ran:
        module = load(name)
        if module is None:
            continue
        print(f"running bench/{name}.py{' (quick)' if args.quick else ''}…", file=sys.stderr)
        options = {"agents": args.fleet} if name == "fleet" and args.fleet else {}
        for f in module.figures(quick=args.quick, **options):
            figures.append(f)
            results["figures"].append({"module": name, "date": results["machine"]["date"], **f})
    if args.only:
        results = merged(args.output, results, ran)
    args.output.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    m = results["machine"]
    print(
        f"\n{m['cpu']}, {m['cores']} cores, Python {m['python']}, "
        f"mosquitto {m['mosquitto'] or 'absent'}, {m['date']}\n"
    )
    print(table(figures))
    print(f"\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
