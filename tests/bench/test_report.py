"""Ratios and targets are computed from the rows of the same run, best against best."""

from __future__ import annotations

from bench.report import analyse, markdown


def _row(system: str, workload: str, conc: int, ips: float, p50: float, p99: float) -> dict:
    return {
        "system": system, "workload": workload, "mode": "closed", "concurrency": conc,
        "images_per_s": ips, "req_per_s": ips, "p50_ms": p50, "p90_ms": p99, "p99_ms": p99,
        "errors": 0, "ok": 10, "avg_batch": 1.0,
    }  # fmt: skip


def _model(runs: list[dict]) -> dict:
    ceiling = {
        "per_batch": [{"batch_size": 1, "batch_ms": 1.0, "images_per_s": 1000.0}],
        "best_batch_size": 1, "compute_images_per_s": 1000.0, "png_encode_ms_per_image": 0.25,
        "npy_encode_ms_per_image": 0.0, "latent_ms_per_image": 0.01, "bulk_images_per_s": 1000.0,
        "single_images_per_s": 800.0, "batch1_plus_png_ms": 1.25,
    }  # fmt: skip
    return {"model": "m", "image": [8, 8, 1], "conditional": False, "origin": "test",
            "ceiling": ceiling, "runs": runs}  # fmt: skip


def test_ratios_use_best_closed_loop_throughput_of_each_system() -> None:
    runs = [
        _row("service", "single", 1, 500.0, 2.0, 3.0),
        _row("service", "single", 8, 700.0, 10.0, 20.0),
        _row("service", "bulk", 1, 950.0, 60.0, 70.0),
        _row("naive", "single", 1, 300.0, 3.0, 4.0),
        _row("naive", "single", 8, 350.0, 20.0, 40.0),
        _row("torchserve", "single", 1, 400.0, 2.5, 2.9),
        _row("torchserve", "single", 8, 600.0, 12.0, 30.0),
    ]
    result = analyse(_model(runs))
    ratios = result["ratios"]
    assert ratios["service/ceiling single"] == 700.0 / 800.0
    assert ratios["service/ceiling bulk"] == 0.95
    assert ratios["service/naive single"] == 2.0
    assert ratios["service/TorchServe single"] == 700.0 / 600.0

    met = {t["target"]: t["met"] for t in result["targets"]}
    assert met["bulk: service/ceiling"] is True
    assert met["single: service/ceiling"] is True
    assert met["single: service/naive"] is True
    assert met["single c=8: throughput vs TorchServe"] is True
    assert met["single c=8: p99 vs TorchServe (ms)"] is True
    assert met["single c=1: p99 vs TorchServe (ms)"] is False  # 3.0 ms against 2.9 ms
    light = next(t for t in result["targets"] if t["target"].startswith("light load"))
    assert light["value"] == 2.0 - 1.25 and light["met"] is True


def test_missing_system_gives_no_ratio_and_an_unknown_target() -> None:
    result = analyse(_model([_row("service", "single", 1, 500.0, 4.0, 5.0)]))
    assert result["ratios"]["service/TorchServe single"] is None
    met = {t["target"]: t["met"] for t in result["targets"]}
    assert met["single: service/naive"] is None
    assert next(t for t in result["targets"] if t["target"].startswith("light"))["met"] is False


def test_markdown_puts_ratios_first() -> None:
    model = _model([_row("service", "single", 1, 500.0, 4.0, 5.0)])
    model["analysis"] = analyse(model)
    meta = {
        "command": "python -m bench", "cpu_model": "cpu", "cores": 2, "server_cpus": "0",
        "client_cpus": "1", "onnxruntime": "1", "onnxruntime_threads": 1, "python": "3",
        "gpu": "none", "started": "now", "seconds": 1.0, "loadavg_start": [0, 0, 0],
        "loadavg_end": [0, 0, 0],
    }  # fmt: skip
    text = markdown({"meta": meta, "models": {"m": model}})
    assert text.index("## Ratios") < text.index("## Targets") < text.index("## m ")
    assert "| m | single: service/ceiling | 0.62 | >= 0.8 | **no** |" in text


def test_quick_run_says_targets_are_not_measured() -> None:
    model = _model([_row("service", "single", 1, 500.0, 4.0, 5.0)])
    model["analysis"] = analyse(model, judged=False)
    assert {t["met"] for t in model["analysis"]["targets"]} == {None}
    meta = {
        "command": "python -m bench --quick", "cpu_model": "cpu", "cores": 2, "quick": True,
        "server_cpus": "0", "client_cpus": "1", "onnxruntime": "1", "onnxruntime_threads": 1,
        "python": "3", "gpu": "none", "started": "now", "seconds": 1.0,
        "loadavg_start": [0, 0, 0], "loadavg_end": [0, 0, 0],
    }  # fmt: skip
    text = markdown({"meta": meta, "models": {"m": model}})
    assert "does not measure the targets" in text and "**no**" not in text
    assert "| m | single: service/ceiling | 0.62 | >= 0.8 | not judged |" in text
