"""Turn a bench run into bench/results/latest.{json,md,png}."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _run(results: dict[str, Any], server: str, workload: str, connections: int) -> dict[str, Any]:
    runs: list[dict[str, Any]] = results["runs"]
    for run in runs:
        if (run["server"], run["workload"], run["connections"]) == (server, workload, connections):
            return run
    return {}


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Run {results['date']} on {results['machine']}; {results['seconds_per_run']} s per run. "
        "`gateway` runs without access logs like the other two and without the audit trail; "
        "`gateway+audit` records every download in the audit trail; `gateway+log` also writes "
        "one JSON access line per request, as shipped; `gateway+redis` is `gateway` with its "
        "rate limits shared through a local Redis (warm workload only).",
        "",
        "| workload | conns | server | req/s | p50 ms | p99 ms | errors | RSS MB | bad Locations "
        "| server CPU µs/req | Postgres CPU µs/req |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in results["runs"]:
        lines.append(
            f"| {run['workload']} | {run['connections']} | {run['server']} | {run['rps']:,} | "
            f"{run['p50_ms']:.2f} | {run['p99_ms']:.2f} | {run['errors']} | {run['rss_mb']} | "
            f"{run['location_mismatches'] if run['server'] != 'ceiling' else '–'} | "
            f"{run.get('cpu_us', '–')} | {run.get('db_cpu_us', '–')} |"
        )
    lines += ["", "| workload | conns | gateway / ceiling | gateway / naive |", "|---|---|---|---|"]
    for workload in ("warm", "cold"):
        for connections in (64, 1024):
            gateway = _run(results, "gateway", workload, connections).get("rps", 0)
            ceiling = _run(results, "ceiling", workload, connections).get("rps", 0)
            naive = _run(results, "naive", workload, connections).get("rps", 0)
            lines.append(
                f"| {workload} | {connections} | {gateway / ceiling if ceiling else 0:.2f} | "
                f"{gateway / naive if naive else 0:.1f} |"
            )
    lines += [
        "",
        "| conns | gateway+redis / gateway req/s | server CPU µs/req added |",
        "|---|---|---|",
    ]
    for connections in (64, 1024):
        local = _run(results, "gateway", "warm", connections)
        shared = _run(results, "gateway+redis", "warm", connections)
        ratio = shared.get("rps", 0) / local["rps"] if local.get("rps") else 0
        added = (
            shared["cpu_us"] - local["cpu_us"] if "cpu_us" in shared and "cpu_us" in local else None
        )
        lines.append(
            f"| {connections} | {ratio:.3f} | {f'{added:+.1f}' if added is not None else '–'} |"
        )
    lines += [
        "",
        "| workload | conns | gateway+audit / gateway req/s | server CPU µs/req added "
        "| Postgres CPU µs/req added | audit rows queued at the end |",
        "|---|---|---|---|---|---|",
    ]
    for workload in ("warm", "cold"):
        for connections in (64, 1024):
            plain = _run(results, "gateway", workload, connections)
            audited = _run(results, "gateway+audit", workload, connections)
            ratio = audited.get("rps", 0) / plain["rps"] if plain.get("rps") else 0
            added = [
                f"{audited[k] - plain[k]:+.1f}" if k in audited and k in plain else "–"
                for k in ("cpu_us", "db_cpu_us")
            ]
            backlog = audited.get("audit_backlog", "–")
            lines.append(
                f"| {workload} | {connections} | {ratio:.2f} | {' | '.join(added)} | {backlog} |"
            )
    if "audit_cost" in results:
        launches = next(iter(results["audit_cost"].values()))["launches"]
        lines += [
            "",
            f"The audit trail's cost again, from {launches} launches of each build in turn, "
            "each measured as above (one launch's speed differs from the next one's, so the "
            "single runs above cannot resolve 10 %):",
            "",
            "| conns | gateway req/s, each launch | gateway+audit req/s, each launch "
            "| ratio of medians | gateway CPU µs/req, median | added by the audit trail |",
            "|---|---|---|---|---|---|",
        ]
        for connections, cost in results["audit_cost"].items():
            plain_rps = ", ".join(f"{rps:,}" for rps in cost["rps"])
            audited_rps = ", ".join(f"{rps:,}" for rps in cost["rps_audited"])
            lines.append(
                f"| {connections} | {plain_rps} | {audited_rps} | "
                f"{cost['rps_ratio_of_medians']:.3f} | "
                f"{cost['cpu_us_median']} | {cost['cpu_us_added_median']:+.1f} |"
            )
    presign = results["presign"]
    lines += [
        "",
        f"Presigning alone: aiobotocore {presign['aiobotocore_us']} µs per URL, the gateway's "
        f"signer {presign['gateway_us']} µs ({presign['speedup']}× faster); "
        f"{presign['gateway_unseen_us']} µs for keys and filenames it has not encoded before.",
    ]
    if "full_caches" in results:
        full = results["full_caches"]
        filled = ", ".join(f"{name} {count:,}" for name, count in full["entries"].items())
        lines.append(
            f"Caches filled at default sizes ({filled} entries): gateway RSS {full['rss_mb']} MB."
        )
    if "idle" in results:
        idle = results["idle"]
        lines.append(
            f"{idle['connections']:,} idle keep-alive connections: gateway RSS "
            f"{idle['rss_before_mb']} MB → {idle['rss_after_mb']} MB "
            f"(+{idle['rss_after_mb'] - idle['rss_before_mb']:.1f} MB)."
        )
    return "\n".join(lines) + "\n"


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [(w, c) for w in ("warm", "cold") for c in (64, 1024)]
    servers = ("ceiling", "naive", "gateway", "gateway+audit", "gateway+log")
    figure, axis = plt.subplots(figsize=(9, 4.5))
    width = 0.16
    for offset, server in enumerate(servers):
        values = [_run(results, server, w, c).get("rps", 0) for w, c in groups]
        positions = [i + (offset - 2) * width for i in range(len(groups))]
        axis.bar(positions, values, width, label=server)
    axis.set_xticks(range(len(groups)), [f"{w}\n{c} conns" for w, c in groups])
    axis.set_ylabel("requests / s")
    axis.set_title("GET /api/v1/attachments/{id}/download (one server process)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_reports(results: dict[str, Any], directory: Path) -> str:
    text = markdown(results)
    (directory / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    (directory / "latest.md").write_text(text)
    chart(results, directory / "latest.png")
    return text
