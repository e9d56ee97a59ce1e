"""``python -m bench [--quick] [--model NAME|DIR ...] [--out DIR]``: run the whole bench.

Two layouts, side by side in one run: ``whole`` (every system free to use the whole machine,
nothing pinned, the load generator on the same host, as a user comparing servers would run
them) and ``pinned`` (servers on their cores, load generators on the others).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from bench.models import DEFAULT_MODELS, REPO_ROOT, resolve_model
from bench.procs import cpu_layout
from bench.report import analyse, write_outputs
from bench.run import (
    QUICK_PLAN,
    SYSTEMS,
    Context,
    Plan,
    asdict_plan,
    bench_model,
    machine_facts,
    measure_scaling,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run of under a minute")
    parser.add_argument(
        "--model",
        action="append",
        dest="models",
        help=f"model to bench, repeatable: {', '.join(DEFAULT_MODELS)} or a <name>/<version> "
        "directory (default: both; --quick: the first)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "runs" / "bench" / "results",
        help="output directory",
    )
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "runs" / "bench", help="scratch")
    parser.add_argument(
        "--systems", default=",".join(SYSTEMS), help="subset of " + ",".join(SYSTEMS)
    )
    parser.add_argument("--server-cpus", help="cores for the servers and the ceiling (default: 0)")
    parser.add_argument("--client-cpus", help="cores for the load generators (default: the rest)")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="onnxruntime threads (0: the server cores; whole machine: each system's default)",
    )
    parser.add_argument("--seconds", type=float, help="seconds per load run")
    parser.add_argument(
        "--layouts", default="whole,pinned", help="whole (nothing pinned), pinned, or both"
    )
    parser.add_argument(
        "--translate",
        action="store_true",
        help="bench the translate route of an image-to-image model (--model: a version dir; "
        "default: the shipped mnist-fonts-cyclegan) against its in-process ceiling instead",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK_PLAN if args.quick else Plan()
    if args.seconds:
        plan = Plan(**{**asdict_plan(plan), "seconds": args.seconds})
    server_cpus, client_cpus = cpu_layout(args.server_cpus, args.client_cpus)
    systems = tuple(s for s in args.systems.split(",") if s)
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        raise SystemExit(f"unknown systems: {', '.join(sorted(unknown))}")
    layouts = [x for x in args.layouts.split(",") if x]
    if set(layouts) - {"whole", "pinned"}:
        raise SystemExit("--layouts takes whole, pinned or both")
    every_core = sorted(os.sched_getaffinity(0))
    if args.translate:
        return translate_main(args, layouts, server_cpus, client_cpus, every_core, argv)
    specs = args.models or (list(DEFAULT_MODELS[:1]) if args.quick else list(DEFAULT_MODELS))
    models = [resolve_model(spec, args.work) for spec in specs]
    started = time.monotonic()
    meta = machine_facts()
    meta["started"] = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    meta["command"] = "python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv)
    meta["plan"] = asdict_plan(plan)
    meta["quick"] = args.quick
    result: dict = {"meta": meta, "layouts": {}}
    for layout in layouts:
        if layout == "whole":
            os.sched_setaffinity(0, set(every_core))
            ctx = Context(
                args.work,
                None,
                None,
                args.threads,
                systems,
                layout="whole",
                wrk_threads=len(every_core),
            )
        else:
            # The load generators (wrk, and the open-loop client here) use the client cores.
            os.sched_setaffinity(0, {int(c) for c in client_cpus.split(",")})
            threads = args.threads or len(server_cpus.split(","))
            ctx = Context(args.work, server_cpus, client_cpus, threads, systems)
        entry: dict = {
            "server_cpus": ctx.server_cpus or "all (not pinned)",
            "client_cpus": ctx.client_cpus or "all (same host, not pinned)",
            "onnxruntime_threads": ctx.threads or f"{len(every_core)} (all cores)",
            "models": {},
        }
        for model in models:
            ctx.log(f"== layout {layout}")
            bench_result = bench_model(model, plan, ctx)
            bench_result["analysis"] = analyse(bench_result, layout, judged=not args.quick)
            entry["models"][model.name] = bench_result
        if layout == "whole" and "service" in systems:
            entry["scaling"] = {models[0].name: measure_scaling(models[0], plan, ctx)}
        result["layouts"][layout] = entry
    os.sched_setaffinity(0, set(every_core))
    meta["seconds"] = time.monotonic() - started
    meta["loadavg_end"] = list(os.getloadavg())
    paths = write_outputs(result, args.out)
    print(paths["md"].read_text(encoding="utf-8"))
    print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0


def translate_main(
    args: argparse.Namespace,
    layouts: list[str],
    server_cpus: str,
    client_cpus: str,
    every_core: list[int],
    argv: list[str] | None,
) -> int:
    """``--translate``: the translate route in each layout, beside its ceiling."""
    from bench.translate import (
        QUICK_TRANSLATE_PLAN,
        TranslatePlan,
        bench_translate,
        resolve_translator,
        write_translate_outputs,
    )

    plan = QUICK_TRANSLATE_PLAN if args.quick else TranslatePlan()
    if args.seconds:
        plan = TranslatePlan(**{**asdict(plan), "seconds": args.seconds})
    model = resolve_translator((args.models or [None])[0], args.work)
    meta = machine_facts()
    meta["started"] = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    meta["command"] = "python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv)
    result: dict = {"meta": meta, "layouts": {}}
    for layout in layouts:
        if layout == "whole":
            os.sched_setaffinity(0, set(every_core))
            ctx = Context(args.work, None, None, args.threads, layout="whole")
            ctx.wrk_threads = len(every_core)
        else:
            os.sched_setaffinity(0, {int(c) for c in client_cpus.split(",")})
            threads = args.threads or len(server_cpus.split(","))
            ctx = Context(args.work, server_cpus, client_cpus, threads)
        ctx.log(f"== layout {layout}")
        result["layouts"][layout] = {
            "server_cpus": ctx.server_cpus or "all (not pinned)",
            "client_cpus": ctx.client_cpus or "all (same host, not pinned)",
            "result": bench_translate(model, plan, ctx),
        }
    os.sched_setaffinity(0, set(every_core))
    meta["loadavg_end"] = list(os.getloadavg())
    paths = write_translate_outputs(result, args.out)
    print(paths["md"].read_text(encoding="utf-8"))
    print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
