"""``report.md``, ``results.json`` and the optional plot of a GPU check (bench/gpu_check.py)."""

from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import Any

BULK_TARGET = 0.80  # bulk images/s against the in-process GPU ceiling (docs/GPU.md)


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _step_table(steps: dict[str, Any]) -> list[str]:
    lines = ["| step | status | seconds | reason |", "|---|---|---|---|"]
    for name, step in steps.items():
        reason = step["reason"].replace("|", "/").replace("\n", " ")[:300]
        lines.append(f"| {name} | {step['status']} | {step['seconds']:.1f} | {reason} |")
    return lines


def _ceiling_lines(ceiling: dict[str, Any]) -> list[str]:
    data = ceiling["data"]
    if not data:
        return []
    lines = [f"## In-process ceiling ({data.get('device')}), images/s", ""]
    if data.get("why_cpu"):
        lines += [f"On the CPU because: {data['why_cpu']}", ""]
    for name, model in data.items():
        if not isinstance(model, dict):
            continue
        lines += [
            f"**{name}**: best {_fmt(model['best_images_per_s'])} images/s "
            f"({model['best_mode']}, batch {model['best_batch_size']})"
            + (f"; CUDA graphs: {model['cuda_graph_error']}" if model["cuda_graph_error"] else ""),
            "",
            "| batch | run | IO binding | CUDA graph |",
            "|---|---|---|---|",
        ]
        for row in model["per_batch"]:
            lines.append(
                f"| {row['batch_size']} | {_fmt(row.get('run'))} | {_fmt(row.get('io_binding'))} "
                f"| {_fmt(row.get('cuda_graph', row.get('cuda_graph_error')))} |"
            )
        lines.append("")
    return lines


def _service_lines(title: str, step: dict[str, Any]) -> list[str]:
    rows = [r for r in step["data"].get("rows", []) if "ok" in r]
    if not rows:
        return []
    lines = [
        f"## {title}",
        "",
        f"{step['data'].get('point_seconds', 0):.1f} s counted per point after "
        f"{step['data'].get('warmup_seconds', 0):.1f} s of warm-up, closed loop "
        "(bench/closed_loop.py) on the same host.",
        "",
        "| model | workload | front ends | connections | req/s | images/s | p50 ms | p99 ms "
        "| errors | of ceiling |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['workload']} | {r['front_ends']} | {r['concurrency']} "
            f"| {_fmt(r['req_per_s'])} | {_fmt(r['images_per_s'])} | {_fmt(r['p50_ms'], 1)} "
            f"| {_fmt(r['p99_ms'], 1)} | {r['errors']} | {_fmt(r.get('of_ceiling'), 2)} |"
        )
    return [*lines, ""]


def targets(steps: dict[str, Any]) -> list[str]:
    """The GPU targets, each met, missed or not measured."""
    gpu = steps.get("service_gpu", {})
    rows = [r for r in gpu.get("data", {}).get("rows", []) if "ok" in r]
    if gpu.get("status") == "skipped" or not rows:
        return ["- not measured: the service did not run on a GPU here"]
    lines = []
    bulk = [r for r in rows if r["workload"] == "bulk" and "of_ceiling" in r]
    if bulk:
        best = max(r["of_ceiling"] for r in bulk)
        verdict = "met" if best >= BULK_TARGET else "missed"
        lines.append(f"- bulk >= {BULK_TARGET:.0%} of the GPU ceiling: {verdict} (best {best:.0%})")
    for model in sorted({r["model"] for r in rows}):
        for conns in sorted({r["concurrency"] for r in rows if r["workload"] == "single"}):
            series = sorted(
                (r["front_ends"], r["req_per_s"])
                for r in rows
                if r["model"] == model and r["workload"] == "single" and r["concurrency"] == conns
            )
            if len(series) > 1:
                shown = ", ".join(f"{f}: {v:,.0f}" for f, v in series)
                lines.append(
                    f"- single req/s by front ends, {model} at {conns} connections: {shown}"
                )
    errors = sum(r["errors"] for r in rows)
    lines.append(f"- zero failed requests: {'met' if errors == 0 else f'missed ({errors})'}")
    return lines


def render_report(results: dict[str, Any]) -> str:
    steps = results["steps"]
    env = steps.get("environment", {}).get("data", {})
    lines = [
        "# gan-serve GPU check",
        "",
        f"{results['when_utc']} UTC, {'--quick' if results['quick'] else 'full run'}, "
        f"{results['total_seconds']:.0f} s in all. Python {env.get('python', '?')}, "
        f"{env.get('cores', '?')} cores, onnxruntime {env.get('onnxruntime', '?')} "
        f"({', '.join(env.get('available_providers', []))}), torch {env.get('torch', '?')}, "
        f"GPU: {', '.join(env.get('gpus', [])) or env.get('cuda_device', '?')}.",
        "",
        *(
            [f"**Interrupted**: {results['interrupted']}.", ""]
            if results.get("interrupted")
            else []
        ),
        *_step_table(steps),
        "",
        "## Targets",
        "",
        *targets(steps),
        "",
    ]
    cuda = steps.get("cuda_provider", {})
    if cuda.get("status") == "passed":
        lines += ["## CUDA provider", ""]
        for name, model in cuda["data"].items():
            lines.append(
                f"- {name}: providers {model['providers']}, "
                f"{model['cuda_share_of_node_time']:.1%} of node time on CUDA, batch 64 "
                f"{model['batch64_ms']['cuda']:.2f} ms on CUDA vs "
                f"{model['batch64_ms']['cpu']:.2f} ms on the CPU"
            )
        lines.append("")
    if "ceiling" in steps:
        lines += _ceiling_lines(steps["ceiling"])
    parity = steps.get("parity", {}).get("data", {})
    if parity:
        lines += ["## Image parity", ""]
        for name, p in parity.items():
            lines.append(
                f"- {name}: {p['fraction_within_1_level']:.4%} of pixels within 1 level over "
                f"{p['images']} images, at most {p['max_levels_apart']} apart"
            )
        lines.append("")
    lines += _service_lines("Service on the GPU", steps.get("service_gpu", {"data": {}}))
    lines += _service_lines("Service on the CPU alone", steps.get("service_cpu", {"data": {}}))
    for name in ("training_amp", "training_torchrun", "training_resume_cpu"):
        step = steps.get(name, {})
        if step.get("data") and step["status"] != "failed":
            lines.append(f"- {name}: {json.dumps(step['data'])}")
    return "\n".join(lines).rstrip() + "\n"


def write_plot(results: dict[str, Any], path: Path) -> bool:
    """Ceiling images/s by batch size and single req/s by front ends; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    steps = results["steps"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    ceiling = steps.get("ceiling", {}).get("data", {})
    for name, model in ceiling.items():
        if not isinstance(model, dict):
            continue
        for mode in ("run", "io_binding", "cuda_graph"):
            points = [(r["batch_size"], r[mode]) for r in model["per_batch"] if mode in r]
            if points:
                left.plot(*zip(*points, strict=True), marker="o", label=f"{name} {mode}")
    left.set_xscale("log", base=2)
    left.set(yscale="log", xlabel="batch size", ylabel="images/s")
    left.set_title(f"in-process ceiling ({ceiling.get('device', '?')})")
    for device in ("service_gpu", "service_cpu"):
        rows = [
            r
            for r in steps.get(device, {}).get("data", {}).get("rows", [])
            if "ok" in r and r["workload"] == "single"
        ]
        for key in sorted({(r["model"], r["concurrency"]) for r in rows}):
            points = sorted(
                (r["front_ends"], r["req_per_s"])
                for r in rows
                if (r["model"], r["concurrency"]) == key
            )
            right.plot(
                *zip(*points, strict=True), marker="o", label=f"{device[8:]} {key[0]} c={key[1]}"
            )
    right.set(xlabel="front ends", ylabel="single-image req/s")
    right.set_title("service scaling")
    for axis in (left, right):
        if axis.lines:
            axis.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_outputs(results: dict[str, Any], out_dir: Path) -> None:
    """results.json first (the record), then the plot and report.md; a failure in either is
    written into the report instead of losing the run."""
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    try:
        plotted = write_plot(results, out_dir / "plot.png")
    except Exception as exc:  # the figures are in results.json either way
        plotted, results["plot"] = False, f"not drawn: {type(exc).__name__}: {exc}"
    else:
        results["plot"] = "plot.png" if plotted else "not drawn: matplotlib is not installed"
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    try:
        report = render_report(results)
    except Exception:
        report = "# gan-serve GPU check\n\nThe report could not be drawn; see results.json.\n\n"
        report += "```\n" + traceback.format_exc() + "```\n"
    if plotted:
        report += "\n![ceiling and scaling](plot.png)\n"
    (out_dir / "report.md").write_text(report)
