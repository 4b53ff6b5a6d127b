"""The main job on the embedded default.

Today it prepares the data (real Fashion-MNIST images, simulated colours and shoppers), writes the
catalogue contact sheet and statistics, starts every service as its own local process, checks each
through the standard gRPC health service and reflection, stops them gracefully and writes a report.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict
from tqdm import tqdm

from couturier.services.client import get_status, list_services
from couturier.services.launcher import LocalStack


async def _probe_stack(stack: LocalStack) -> dict[str, Any]:
    waited = await stack.wait_until_serving(timeout_s=60.0)
    services: dict[str, Any] = {}
    for key, proc in stack.processes.items():
        status = MessageToDict(await get_status(proc.target), preserving_proto_field_name=True)
        services[key] = {
            "target": proc.target,
            "seconds_to_serving": round(waited[key], 3),
            "reflection": await list_services(proc.target),
            "status": status,
        }
    return services


def check_services(log_dir: Path) -> dict[str, Any]:
    """Start every service as a process, check health/reflection/diagnostics, stop them."""
    stack = LocalStack(log_dir=log_dir)
    try:
        stack.start()
        services = asyncio.run(_probe_stack(stack))
    finally:
        exit_codes = stack.stop()
    for key, code in exit_codes.items():
        services.setdefault(key, {})["exit_code"] = code
    return services


def run_demo(out_dir: Path, data_dir: Path | None = None, profile: str = "demo") -> Path:
    """Run the main job; returns the path of the markdown report."""
    from couturier.export.data.dataset import prepare
    from couturier.export.data.paths import default_data_dir
    from couturier.export.data.report import write_contact_sheet, write_stats

    out_dir.mkdir(parents=True, exist_ok=True)
    data_dir = data_dir or default_data_dir()
    timings: dict[str, float] = {}
    steps = tqdm(total=3, desc="couturier demo", unit="step")

    started = time.perf_counter()
    steps.set_postfix_str("data")
    prepared = prepare(data_dir, profile=profile)
    stats_paths = write_stats(prepared, out_dir)
    sheet = write_contact_sheet(prepared.catalogue, out_dir / "catalogue_contact_sheet.png")
    timings["data_s"] = time.perf_counter() - started
    steps.update()

    started = time.perf_counter()
    steps.set_postfix_str("services")
    services = check_services(out_dir / "logs")
    timings["services_s"] = time.perf_counter() - started
    steps.update()

    steps.set_postfix_str("report")
    summary = {
        "profile": profile,
        "data_dir": str(data_dir),
        "contact_sheet": str(sheet),
        "stats": [str(path) for path in stats_paths],
        "services": services,
        "timings_s": {key: round(value, 2) for key, value in timings.items()},
    }
    (out_dir / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    report = out_dir / "demo_report.md"
    report.write_text(_markdown(summary))
    steps.update()
    steps.close()
    return report


def _markdown(summary: dict[str, Any]) -> str:
    lines = [
        "# couturier demo (embedded default)",
        "",
        "Images are REAL (Fashion-MNIST); colours and shoppers are SIMULATED (see the data statistics).",
        "",
        f"- profile: `{summary['profile']}`, data dir: `{summary['data_dir']}`",
        f"- contact sheet: `{summary['contact_sheet']}`",
        *(f"- statistics: `{path}`" for path in summary["stats"]),
        f"- timings: {summary['timings_s']}",
        "",
        "## Services (each its own process on 127.0.0.1)",
        "",
        "| service | target | SERVING after (s) | dependencies | reflected services | exit code |",
        "|---|---|---|---|---|---|",
    ]
    for key, info in summary["services"].items():
        deps = ", ".join(
            f"{dep['name']}={'ready' if dep.get('ready') else 'NOT ready'}"
            for dep in info.get("status", {}).get("dependencies", [])
        ) or "none"
        lines.append(
            f"| {key} | {info.get('target', '')} | {info.get('seconds_to_serving', '')} | {deps} | "
            f"{len(info.get('reflection', []))} | {info.get('exit_code', '')} |"
        )
    return "\n".join(lines) + "\n"
