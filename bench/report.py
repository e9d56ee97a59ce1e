"""Ratios, targets and the three outputs of a run: JSON, Markdown tables and a p99-against-
throughput plot (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SYSTEM_LABELS = {
    "ceiling": "ceiling",
    "service": "gan-serve",
    "naive": "naive FastAPI",
    "torchserve": "TorchServe",
}


def _closed(runs: list[dict[str, Any]], system: str, workload: str) -> list[dict[str, Any]]:
    return [
        r
        for r in runs
        if r["system"] == system and r["workload"] == workload and r["mode"] == "closed"
    ]


def _best(runs: list[dict[str, Any]], system: str, workload: str) -> float | None:
    rows = _closed(runs, system, workload)
    return max((r["images_per_s"] for r in rows), default=None) if rows else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


QUICK_RUN_NOTE = (
    "This was a quick run (`--quick`: a smoke test, about a second per load level, few"
    " concurrencies), which does not measure the targets: none is judged here. The full"
    " `python -m bench` does."
)


# The pinned layout's ratios committed before the service ran several processes: floors.
PINNED_FLOORS = {
    "mnist-cdcgan": {"single": 0.52, "bulk": 0.83},
    "dcgan64-rgb": {"single": 0.86, "bulk": 0.99},
}
# Whole machine: service req/s over TorchServe's best configuration, per concurrency.
WHOLE_MACHINE_GOALS = {8: 1.5, 64: 1.2, 256: 1.2}


def analyse(model: dict[str, Any], layout: str = "pinned", judged: bool = True) -> dict[str, Any]:
    """Ratios (service over each other system, best closed-loop images/s of each, same run)
    and the targets of the layout, each with its measured value and whether it was met; with
    ``judged`` False (a quick run, too short to measure them) ``met`` stays None."""
    runs, ceiling = model["runs"], model["ceiling"]
    service_single = _best(runs, "service", "single")
    service_bulk = _best(runs, "service", "bulk")
    ratios = {
        "service/ceiling bulk": _ratio(service_bulk, ceiling["bulk_images_per_s"]),
        "service/ceiling single": _ratio(service_single, ceiling["single_images_per_s"]),
        "service/naive single": _ratio(service_single, _best(runs, "naive", "single")),
        "service/naive bulk": _ratio(service_bulk, _best(runs, "naive", "bulk")),
        "service/TorchServe single": _ratio(service_single, _best(runs, "torchserve", "single")),
    }
    targets: list[dict[str, Any]] = []

    def target(name: str, value: float | None, goal: str, met: bool | None) -> None:
        targets.append(
            {"target": name, "value": value, "goal": goal, "met": met if judged else None}
        )

    def at_least(name: str, value: float | None, goal: float) -> None:
        target(name, value, f">= {goal}", None if value is None else value >= goal)

    at_least("bulk: service/ceiling", ratios["service/ceiling bulk"], 0.9)
    if layout == "whole":
        _whole_machine_targets(runs, target, at_least)
        return {"ratios": ratios, "targets": targets}
    floors = PINNED_FLOORS.get(model.get("model", ""))
    if floors:
        at_least(
            "single: service/ceiling, committed", ratios["service/ceiling single"], floors["single"]
        )
        at_least("bulk: service/ceiling, committed", ratios["service/ceiling bulk"], floors["bulk"])
    at_least("single: service/ceiling", ratios["service/ceiling single"], 0.8)
    at_least("single: service/naive", ratios["service/naive single"], 2.0)
    ts_rows = {r["concurrency"]: r for r in _closed(runs, "torchserve", "single")}
    for row in _closed(runs, "service", "single"):
        other = ts_rows.get(row["concurrency"])
        if other is None:
            continue
        ahead = row["images_per_s"] > other["images_per_s"]
        target(
            f"single c={row['concurrency']}: throughput vs TorchServe",
            _ratio(row["images_per_s"], other["images_per_s"]),
            "> 1",
            ahead,
        )
        if row["p99_ms"] is not None and other["p99_ms"] is not None:
            target(
                f"single c={row['concurrency']}: p99 vs TorchServe (ms)",
                row["p99_ms"] - other["p99_ms"],
                "< 0 (lower p99)",
                row["p99_ms"] < other["p99_ms"],
            )
    light = next((r for r in _closed(runs, "service", "single") if r["concurrency"] == 1), None)
    if light is not None and light["p50_ms"] is not None and "batch1_plus_png_ms" in ceiling:
        excess = light["p50_ms"] - ceiling["batch1_plus_png_ms"]
        target(
            "light load: p50 at c=1 minus (batch-1 compute + PNG), ms", excess, "<= 1", excess <= 1
        )
    return {"ratios": ratios, "targets": targets}


def _whole_machine_targets(runs: list[dict[str, Any]], target, at_least) -> None:
    """Single images against TorchServe's best configuration, concurrency by concurrency:
    req/s at least the goal's multiple, with a p99 no higher."""
    ts_rows = {r["concurrency"]: r for r in _closed(runs, "torchserve", "single")}
    for row in _closed(runs, "service", "single"):
        goal = WHOLE_MACHINE_GOALS.get(row["concurrency"])
        other = ts_rows.get(row["concurrency"])
        if goal is None or other is None:
            continue
        at_least(
            f"single c={row['concurrency']}: req/s vs TorchServe-best",
            _ratio(row["req_per_s"], other["req_per_s"]),
            goal,
        )
        if row["p99_ms"] is not None and other["p99_ms"] is not None:
            target(
                f"single c={row['concurrency']}: p99 minus TorchServe-best p99 (ms)",
                row["p99_ms"] - other["p99_ms"],
                "<= 0",
                row["p99_ms"] <= other["p99_ms"],
            )


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


LAYOUT_TITLES = {
    "whole": "Whole machine: nothing pinned, every system free to use every core, the load"
    " generator on the same host",
    "pinned": "Pinned layout: servers on their cores, load generators on the others",
}


def markdown(result: dict[str, Any]) -> str:
    """The report: for each layout (whole machine first), ratios, targets, then every table."""
    meta = result["meta"]
    out = [
        "# Bench results",
        "",
        f"- Command: `{meta['command']}`",
        f"- Machine: {meta['cpu_model']}, {meta['cores']} cores; onnxruntime"
        f" {meta['onnxruntime']}, Python {meta['python']}; GPU: {meta['gpu']}",
        f"- Started {meta['started']}, took {meta['seconds']:.0f} s; load average at start"
        f" {' '.join(f'{x:.2f}' for x in meta['loadavg_start'])}, at end"
        f" {' '.join(f'{x:.2f}' for x in meta['loadavg_end'])}",
    ]
    layouts = result.get("layouts") or {"pinned": {**meta, "models": result["models"]}}
    for layout, entry in layouts.items():
        out += [
            "",
            f"# {LAYOUT_TITLES.get(layout, layout)}",
            "",
            f"Servers on CPU {entry.get('server_cpus')}, load generators on CPU"
            f" {entry.get('client_cpus')}; onnxruntime threads:"
            f" {entry.get('onnxruntime_threads')}.",
        ]
        out += _layout(entry, meta.get("quick", False))
    return "\n".join(out) + "\n"


def _layout(entry: dict[str, Any], quick: bool) -> list[str]:
    models = entry["models"]
    first = next(iter(models.values()))["analysis"]["ratios"]
    out = [
        "",
        "## Ratios (same run, best closed-loop images/s of each system)",
        "",
        "| model | " + " | ".join(first) + " |",
        "|---|" + "---|" * len(first),
    ]
    for name, model in models.items():
        values = model["analysis"]["ratios"].values()
        out.append(f"| {name} | " + " | ".join(_fmt(v, 2) for v in values) + " |")
    out += ["", "## Targets", ""]
    out += [QUICK_RUN_NOTE, ""] if quick else []
    out += [
        "| model | target | measured | goal | met |",
        "|---|---|---|---|---|",
    ]
    for name, model in models.items():
        for t in model["analysis"]["targets"]:
            out.append(
                f"| {name} | {t['target']} | {_fmt(t['value'], 2)} | {t['goal']}"
                f" | {'not judged' if quick else _fmt(t['met'])} |"
            )
    for name, rows in (entry.get("scaling") or {}).items():
        base = rows[0]["req_per_s"] if rows else None
        out += [
            "",
            f"## Scaling: {name} single images, {rows[0]['concurrency'] if rows else '-'}"
            " connections, against the number of front ends",
            "",
            "| front ends | inference | req/s | p50 ms | p99 ms | errors | vs 1 front end"
            " | CPU ms per request: single process or parent | front ends | engine |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            cpu = r.get("cpu_ms_per_request") or {}
            out.append(
                f"| {r['front_ends']} | {r.get('inference', '-')} | {_fmt(r['req_per_s'])}"
                f" | {_fmt(r['p50_ms'], 2)}"
                f" | {_fmt(r['p99_ms'], 2)} | {r['errors']}"
                f" | {_fmt(_ratio(r['req_per_s'], base), 2)} | {_fmt(cpu.get('service'), 3)}"
                f" | {_fmt(cpu.get('gan-serve-http'), 3)}"
                f" | {_fmt(cpu.get('gan-serve-infer'), 3)} |"
            )
    for name, model in models.items():
        c = model["ceiling"]
        size = "x".join(map(str, model["image"]))
        out += [
            "",
            f"## {name} ({size}, {'conditional' if model['conditional'] else 'unconditional'},"
            f" {model['origin']})",
            "",
            f"Ceiling: best compute {c['compute_images_per_s']:.0f} images/s at batch"
            f" {c['best_batch_size']}; PNG encode {c['png_encode_ms_per_image']:.3f} ms/image;"
            f" seed-to-latent {c['latent_ms_per_image']:.3f} ms/image; single-image ceiling"
            f" (compute + PNG) {c['single_images_per_s']:.0f} images/s; bulk ceiling"
            f" {c['bulk_images_per_s']:.0f} images/s; batch-1 compute + PNG"
            f" {c.get('batch1_plus_png_ms', float('nan')):.2f} ms.",
            "",
            "| batch | ms per batch | images/s |",
            "|---:|---:|---:|",
        ]
        out += [
            f"| {b['batch_size']} | {b['batch_ms']:.2f} | {b['images_per_s']:.0f} |"
            for b in c["per_batch"]
        ]
        out += [
            "",
            "| system | workload | load | images/s | req/s | p50 ms | p90 ms | p99 ms | errors"
            " | avg batch |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in model["runs"]:
            load = (
                f"{r['concurrency']} conn"
                if r["mode"] == "closed"
                else f"Poisson {r['rate']:.0f}/s"
            )
            out.append(
                f"| {SYSTEM_LABELS[r['system']]} | {r['workload']} | {load}"
                f" | {_fmt(r['images_per_s'])} | {_fmt(r['req_per_s'])}"
                f" | {_fmt(r['p50_ms'], 2)} | {_fmt(r['p90_ms'], 2)}"
                f" | {_fmt(r['p99_ms'], 2)} | {r['errors']} | {_fmt(r.get('avg_batch'))} |"
            )
        inside = [r for r in model["runs"] if r.get("server_ms")]
        if inside:
            out += [
                "",
                "Inside the service (means from its own histograms over each run, ms): request"
                " = time in the app per request; queue wait per request; inference per batch;"
                " encode per call.",
                "",
                "| workload | load | request | queue wait | inference/batch | encode | avg batch |",
                "|---|---|---:|---:|---:|---:|---:|",
            ]
            for r in inside:
                ms = r["server_ms"]
                load = f"{r['concurrency']} conn" if r["mode"] == "closed" else f"{r['rate']:.0f}/s"
                out.append(
                    f"| {r['workload']} | {load} | {_fmt(ms.get('request'), 2)}"
                    f" | {_fmt(ms.get('queue_wait'), 2)} | {_fmt(ms.get('inference'), 2)}"
                    f" | {_fmt(ms.get('encode'), 3)} | {_fmt(r.get('avg_batch'))} |"
                )
        grid = model.get("torchserve_grid") or []
        if grid:
            out += [
                "",
                "TorchServe configurations tried (single images, closed loop):",
                "",
                "| workers | threads | batch_size | max_batch_delay ms | images/s | p99 ms"
                " | errors |",
                "|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for g in grid:
                out.append(
                    f"| {g['workers']} | {g.get('threads', '-')} | {g['batch_size']}"
                    f" | {g['max_batch_delay_ms']} | {_fmt(g['images_per_s'])}"
                    f" | {_fmt(g['p99_ms'], 2)} | {g['errors']} |"
                )
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    """p99 latency against images/s: one column per model, single images above, bulk below
    (``result["models"]``: one layout's models)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(result["models"].values())
    fig, axes = plt.subplots(2, len(models), figsize=(6 * len(models), 8), squeeze=False)
    colors = {
        "ceiling": "black",
        "service": "tab:blue",
        "naive": "tab:orange",
        "torchserve": "tab:green",
    }
    for col, model in enumerate(models):
        c = model["ceiling"]
        for row, workload in enumerate(("single", "bulk")):
            ax = axes[row][col]
            encode = (
                c["png_encode_ms_per_image"]
                if workload == "single"
                else c["npy_encode_ms_per_image"]
            )
            xs, ys = [], []
            for b in c["per_batch"]:
                batch_ms = b["batch_ms"] + encode * b["batch_size"]
                xs.append(b["batch_size"] * 1e3 / batch_ms)
                ys.append(batch_ms)
            ax.plot(xs, ys, ".--", color=colors["ceiling"], label="ceiling (latency = one batch)")
            for b, x, y in zip(c["per_batch"], xs, ys, strict=True):
                ax.annotate(f"b{b['batch_size']}", (x, y), fontsize=7, color="gray")
            for system in ("service", "naive", "torchserve"):
                rows = [
                    r for r in model["runs"] if r["system"] == system and r["workload"] == workload
                ]
                closed = [r for r in rows if r["mode"] == "closed" and r["p99_ms"] is not None]
                if closed:
                    ax.plot(
                        [r["images_per_s"] for r in closed],
                        [r["p99_ms"] for r in closed],
                        "o-",
                        color=colors[system],
                        label=f"{SYSTEM_LABELS[system]} (closed loop)",
                    )
                    for r in closed:
                        ax.annotate(
                            f"c{r['concurrency']}", (r["images_per_s"], r["p99_ms"]), fontsize=7
                        )
                opened = [r for r in rows if r["mode"] == "open" and r["p99_ms"] is not None]
                if opened:
                    ax.plot(
                        [r["images_per_s"] for r in opened],
                        [r["p99_ms"] for r in opened],
                        "x",
                        color=colors[system],
                        markersize=9,
                        label=f"{SYSTEM_LABELS[system]} (Poisson)",
                    )
            ax.set_yscale("log")
            ax.set_xlabel("images/s")
            ax.set_ylabel("p99 latency (ms)")
            size = "x".join(map(str, model["image"]))
            what = "n=1 PNG" if workload == "single" else "n=64 npy"
            ax.set_title(f"{model['model']} {size}: {what}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(result: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """results.json, results.md and p99_vs_throughput.png under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "results.json",
        "md": out_dir / "results.md",
        "png": out_dir / "p99_vs_throughput.png",
    }
    paths["json"].write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    paths["md"].write_text(markdown(result), encoding="utf-8")
    layouts = result.get("layouts") or {"pinned": result}
    for index, (layout, entry) in enumerate(layouts.items()):
        # The first layout (whole machine in a full run) keeps the plain name.
        target = paths["png"] if index == 0 else out_dir / f"p99_vs_throughput_{layout}.png"
        plot(entry, target)
        paths[f"png_{layout}"] = target
    return paths
