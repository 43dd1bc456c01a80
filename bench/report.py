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


# Within a workload, the gateway as shipped first, then the rest in the order they ran.
FIRST = ("shipped",)


def _ordered(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    workloads = list(dict.fromkeys(run["workload"] for run in runs))
    return sorted(
        runs, key=lambda run: (workloads.index(run["workload"]), run["server"] not in FIRST)
    )


def _ratio(numerator: float, denominator: float, digits: int) -> str:
    return f"{numerator / denominator:.{digits}f}" if numerator and denominator else "–"


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Run {results['date']} on {results['machine']}; {results['seconds_per_run']} s per run. "
        "`shipped` is the gateway as a user gets it (access log at INFO, audit trail, abuse "
        "limits on, raised only as the bench's 100 keys need); `shipped-quiet` is the same "
        "without its access log. The breakdown, like the ceiling and the naive build without "
        "access log: `gateway` without audit trail or limits, `gateway+audit` with the audit "
        "trail, `gateway+redis` with its limits shared through a local Redis (warm only).",
        "",
        "| workload | conns | server | req/s | p50 ms | p99 ms | p99 / p50 | errors | RSS MB "
        "| bad Locations | server CPU µs/req | of which GC | Postgres CPU µs/req |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in _ordered(results["runs"]):
        server = f"**{run['server']}**" if run["server"] in FIRST else run["server"]
        lines.append(
            f"| {run['workload']} | {run['connections']} | {server} | {run['rps']:,} | "
            f"{run['p50_ms']:.2f} | {run['p99_ms']:.2f} | "
            f"{_ratio(run['p99_ms'], run['p50_ms'], 1)} | {run['errors']} | {run['rss_mb']} | "
            f"{run['location_mismatches'] if run['server'] != 'ceiling' else '–'} | "
            f"{run.get('cpu_us', '–')} | {run.get('gc_us', '–')} | {run.get('db_cpu_us', '–')} |"
        )
    lines += [
        "",
        "| workload | conns | shipped / ceiling | shipped / naive | gateway / ceiling "
        "| gateway / naive | access log's cost (shipped / shipped-quiet) |",
        "|---|---|---|---|---|---|---|",
    ]
    for workload in ("warm", "cold"):
        for connections in (64, 1024):
            rps = {
                name: _run(results, name, workload, connections).get("rps", 0)
                for name in ("ceiling", "naive", "shipped", "shipped-quiet", "gateway")
            }
            lines.append(
                f"| {workload} | {connections} | {_ratio(rps['shipped'], rps['ceiling'], 2)} | "
                f"{_ratio(rps['shipped'], rps['naive'], 1)} | "
                f"{_ratio(rps['gateway'], rps['ceiling'], 2)} | "
                f"{_ratio(rps['gateway'], rps['naive'], 1)} | "
                f"{_ratio(rps['shipped'], rps['shipped-quiet'], 2)} |"
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
    for cost, what in PAIRED_COSTS.items():
        if cost in results:
            lines += paired_cost_table(results[cost], what)
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
        sizes = full.get("sizes", {})
        reached = all(full["entries"].get(name, 0) >= size for name, size in sizes.items())
        state = "filled at default sizes" if reached else "short of their default sizes"
        lines.append(f"Caches {state} ({filled} entries): gateway RSS {full['rss_mb']} MB.")
    if "idle" in results:
        idle = results["idle"]
        lines.append(
            f"{idle['connections']:,} idle keep-alive connections: gateway RSS "
            f"{idle['rss_before_mb']} MB → {idle['rss_after_mb']} MB "
            f"(+{idle['rss_after_mb'] - idle['rss_before_mb']:.1f} MB)."
        )
    return "\n".join(lines) + "\n"


# The costs bench.run measures again from launches in turn, and what each is.
PAIRED_COSTS = {"audit_cost": "the audit trail", "access_log_cost": "the access log"}


def paired_cost_table(cost: dict[str, dict[str, Any]], what: str) -> list[str]:
    first = next(iter(cost.values()))
    without, with_ = first["builds"]
    lines = [
        "",
        f"{what.capitalize()}'s cost again ({with_} against {without}), from "
        f"{first['launches']} launches of each build in turn, each measured as above (one "
        "launch's speed differs from the next one's, so the single runs above cannot "
        "resolve 10 %):",
        "",
        f"| conns | {without} req/s, each launch | {with_} req/s, each launch "
        f"| ratio of medians | {without} CPU µs/req, median | added by {what} |",
        "|---|---|---|---|---|---|",
    ]
    for connections, runs in cost.items():
        base = ", ".join(f"{rps:,}" for rps in runs["rps"])
        added = ", ".join(f"{rps:,}" for rps in runs["rps_with"])
        lines.append(
            f"| {connections} | {base} | {added} | {runs['rps_ratio_of_medians']:.3f} | "
            f"{runs['cpu_us_median']} | {runs['cpu_us_added_median']:+.1f} |"
        )
    return lines


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [(w, c) for w in ("warm", "cold") for c in (64, 1024)]
    servers = ("shipped", "ceiling", "naive", "gateway", "gateway+audit")
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
