"""python -m benchmarks [--quick] [--only speed,speed_keras3,int8_layers,int8_speed,budget,budget_latency,budget_alloc,overhead,accuracy,accuracy_ft,accuracy_l1,scale,converter_memory] [--output DIR]

Runs the benchmark sections and writes ``results.json``, ``RESULTS.md`` and PNG plots into
the output folder (default: this package's folder; with ``--quick``, a new temporary folder).
With ``--only``, sections already in the folder's results.json from a run of the same mode are
kept, so one section can be re-measured alone. If the folder has a ``NOTES.md``, it is copied
into RESULTS.md under "Notes" (explanations of misses survive re-runs). The exit status is 1
when a section raised (its traceback is in RESULTS.md), else 0; missed targets are reported,
not failures.
"""

import argparse
import importlib
import os
import sys
import tempfile
import time
import traceback

from benchmarks import SECTIONS

TITLES = {
    "speed": "Speed: latency vs MACs in LiteRT",
    "speed_keras3": "Speed on Keras 3: the same protocol on keras.applications models",
    "speed_hub": "Speed on keras-hub: a traced MobileNetV3 and a ViT with attention heads",
    "int8_layers": "int8 layers: where int8 LiteRT loses speedup per MAC",
    "int8_speed": "int8 speed per MAC, interleaved: protocols, calibration and float first layers",
    "budget": "Budget: prune_to_budget meets MAC, parameter and file-size budgets",
    "budget_latency": "Budget (latency): prune_to_budget against measured LiteRT latency",
    "budget_alloc": "Budget (allocation): sensitivity-guided vs uniform ratios at equal latency",
    "overhead": "Overhead: training-step time while pruning",
    "accuracy": "Accuracy at compression: both papers' procedures against the equal-budget control",
    "accuracy_ft": "Accuracy II: fine-tuning length, pruned vs from scratch, D-Score vs random",
    "accuracy_l1": "Accuracy II: what the L1 phase does to the strengths",
    "scale": "Scale: pipeline time vs model depth",
    "converter_memory": "Converter memory: the conversion worker over many conversions",
}


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[1])
    parser.add_argument("--quick", action="store_true",
                        help="a 1-2 minute smoke run: tiny models, few runs (default output: a "
                             "temporary folder)")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run, of {','.join(SECTIONS)}")
    parser.add_argument("--output", default=None,
                        help="output folder (default: the benchmarks package folder, or a "
                             "temporary folder with --quick)")
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in SECTIONS]
    if unknown or not only:
        parser.error(f"--only takes sections from {', '.join(SECTIONS)}; got {args.only!r}")
    args.only = [s for s in SECTIONS if s in only]
    return args


def _output_folder(args):
    if args.output:
        folder = os.path.abspath(os.fspath(args.output))
    elif args.quick:
        folder = tempfile.mkdtemp(prefix="tfsynapse-benchmarks-")
    else:
        folder = os.path.dirname(os.path.abspath(__file__))
    os.makedirs(folder, exist_ok=True)
    return folder


def _previous(common, path, mode, keep):
    """Sections of an earlier run of the same mode that this run does not redo."""
    if not os.path.exists(path):
        return {}
    try:
        old = common.read_json(path)
    except (OSError, ValueError):
        return {}
    if old.get("meta", {}).get("mode") != mode:
        return {}
    return {k: v for k, v in old.get("sections", {}).items() if k not in keep}


def main(argv=None):
    """Runs the benchmarks; returns the exit status (0: every section ran)."""
    args = parse_args(sys.argv[1:] if argv is None else [os.fspath(a) for a in argv])
    output = _output_folder(args)
    from benchmarks import common

    common.quiet_tensorflow()
    ctx = common.Context(quick=args.quick, output=output)
    json_path, md_path = ctx.path("results.json"), ctx.path("RESULTS.md")
    command = "python -m benchmarks" + (" --quick" if args.quick else "") + \
        ("" if args.only == list(SECTIONS) else f" --only {','.join(args.only)}")
    results = {
        "meta": {"date": common.now_iso(), "mode": ctx.mode, "command": command,
                 "machine": common.machine_info()},
        "sections": _previous(common, json_path, ctx.mode, args.only),
    }
    ctx.log("benchmarks", f"{ctx.mode} mode, sections {', '.join(args.only)}; output {output}")
    failed = []
    for name in args.only:
        module = importlib.import_module(f"benchmarks.{name}")
        ctx.log(name, "start")
        started = time.perf_counter()
        try:
            section = module.run(ctx)
            section["status"] = "ok"
        except Exception:  # noqa: BLE001 - report the failure, run the other sections
            section = {"status": "error", "error": traceback.format_exc(), "rows": [], "targets": []}
            failed.append(name)
            print(section["error"], file=sys.stderr, flush=True)
        section["seconds"] = time.perf_counter() - started
        section["finished"] = common.now_iso()
        section["cpu_features"] = common.cpu_features()
        section["mode"] = ctx.mode
        results["sections"][name] = section
        ctx.log(name, f"done in {section['seconds']:.0f}s ({section['status']})")
        results["meta"]["total_seconds"] = time.perf_counter() - ctx.start
        common.write_json(results, json_path)
        write_markdown(results, md_path)
    for entry in all_targets(results):
        print(f"{entry['status']}: {entry['section']}: {entry['name']} = {entry['value']:.3f} "
              f"(target {entry['op']} {entry['target']:g})")
    ctx.log("benchmarks", f"wrote {md_path}, {json_path} and plots")
    return 1 if failed else 0


def all_targets(results):
    return [t for name in SECTIONS for t in results["sections"].get(name, {}).get("targets", [])]


def write_markdown(results, path):
    from benchmarks import common

    meta = results["meta"]
    machine = meta["machine"]
    versions = machine["versions"]
    out = [
        "# tfsynapse benchmark results", "",
        f"Written by `{meta['command']}` on {meta['date']}, **{meta['mode']} mode**"
        + (" (a smoke test: tiny models and few runs; the numbers are not meaningful)"
           if meta["mode"] == "quick" else "") + ".", "",
        "## Machine", "",
        common.md_table(["CPU", "cores (usable)", "RAM", "OS", "load average at start"], [[
            machine["cpu"] + (f" ({', '.join(machine['cpu_features'])})"
                              if machine.get("cpu_features") else ""),
            f"{machine['cores']} ({machine['cores_usable']})",
            f"{machine['ram_gib']} GiB", machine["os"], machine["load_average_at_start"]]]),
        "",
        common.md_table(list(versions), [[v or "-" for v in versions.values()]]),
        "",
        "## Targets", "",
    ]
    targets = all_targets(results)
    if targets:
        out.append(common.md_table(
            ["section", "target", "value", "status"],
            [[t["section"], f"{t['name']} {t['op']} {t['target']:g}", f"{t['value']:.3f}",
              f"**{t['status']}**"] for t in targets]))
        misses = [t for t in targets if t["status"] == "MISS"]
        out.append("")
        for t in misses:
            out.append(f"- **MISS** ({t['section']}): {t['name']} = {t['value']:.3f}, "
                       f"target {t['op']} {t['target']:g}.")
        if not misses:
            out.append("All targets met.")
    else:
        out.append("No targets were checked in this run.")
    notes = os.path.join(os.path.dirname(path), "NOTES.md")
    if os.path.exists(notes):
        with open(notes) as handle:
            out += ["", "## Notes", "", handle.read().strip()]
    for index, name in enumerate(SECTIONS, 1):
        section = results["sections"].get(name)
        if section is None:
            continue
        out += ["", f"## {index}. {TITLES[name]}", "",
                f"_{section.get('mode', meta['mode'])} mode, finished {section.get('finished')}, "
                f"took {section.get('seconds', 0):.0f} s"
                + (f" on a CPU with {', '.join(section['cpu_features'])}"
                   if section.get("cpu_features") else "") + "._", ""]
        if section.get("status") == "error":
            out += ["**The section failed:**", "", "```", section["error"].strip(), "```"]
            continue
        module = importlib.import_module(f"benchmarks.{name}")
        out.append(module.markdown(section))
        for plot in section.get("plots", []):
            out += ["", f"![{name}]({plot})"]
    with open(path, "w") as handle:
        handle.write("\n".join(str(line) for line in out) + "\n")


if __name__ == "__main__":
    sys.exit(main())
