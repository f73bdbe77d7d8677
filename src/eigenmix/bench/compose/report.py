"""``results.md`` of the composition benchmark and the table the command prints."""

from __future__ import annotations

from rich.table import Table

ORDER = ("oracle", "learned(n=64)", "spectral+stream", "spectral+stats(n=16)", "spectral", "arrow", "peft_arrow", "uniform")


def _mean(d: dict[str, float]) -> float:
    return sum(d.values()) / len(d)


def router_rows(results: dict) -> list[list[str]]:
    """Per entry: name, per-task accuracy, avg, avg normalized, gap recovered, routing
    accuracy, seconds; static entries (the best data-free merge and the tuned ones) beside."""
    tasks, individual, floor = results["tasks"], results["individual"], results["floor"]
    norm_floor = _mean({t: floor[t] / individual[t] for t in tasks})

    def row(name: str, e: dict) -> list[str]:
        norm = e["avg_normalized_acc"] if "avg_normalized_acc" in e else _mean({t: e["per_task"][t] / individual[t] for t in tasks})
        gap = (norm - norm_floor) / (1 - norm_floor)
        routing = f"{100 * _mean(e['routing_acc']):.1f}" if "routing_acc" in e else ""
        seconds = f"{e['seconds']:.0f}" if "seconds" in e else ""
        cells = [f"{100 * e['per_task'][t]:.1f}" for t in tasks]
        return [name, *cells, f"{100 * _mean(e['per_task']):.1f}", f"{100 * norm:.1f}", f"{100 * gap:.0f}%", routing, seconds]

    rows = [row("individual", {"per_task": individual}), row("floor (linear probe)", {"per_task": floor})]
    routers = results.get("routers", {})
    rows += [row(name, routers[name]) for name in ORDER if name in routers and "per_task" in routers[name]]
    static = results.get("static", {})
    if static:
        data_free = {n: e for n, e in static.items() if "tune" not in n and n not in ("adamerging",) and "lorahub" not in n}
        best = max(data_free, key=lambda n: data_free[n]["avg_normalized_acc"]) if data_free else None
        for name, e in static.items():
            if name == best or name not in data_free:
                rows.append(row(f"static: {name}", e))
    return rows


HEADER = ("entry", "avg", "avg norm.", "gap recovered", "routing acc.", "seconds")


def markdown(results: dict) -> str:
    tasks = results["tasks"]
    lines = []
    if "routers" in results:
        head = [HEADER[0], *tasks, *HEADER[1:]]
        lines += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
        lines += ["| " + " | ".join(r) + " |" for r in router_rows(results)]
        lines += [f"\n{name}: not run, {e['unsupported']}" for name, e in results["routers"].items() if "unsupported" in e]
        lines.append("")
    if "cost" in results:
        per_k = results["cost"]["per_k"]
        names = list(next(iter(per_k.values()))["ratio_to_base"])
        lines += ["forward time over the base model's (median):", "", "| K | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
        lines += [f"| {k} | " + " | ".join(f"{v['ratio_to_base'][n]:.2f}×" for n in names) + " |" for k, v in per_k.items()]
        lines.append("")
    if "continual" in results:
        c = results["continual"]["summary"]
        title = (
            "| continual entry | final avg acc | BWT (points) | seconds per addition | redo it with all | ratio "
            "| re-merge all with tsv | ratio |"
        )
        lines += [title, "|---|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [
            f"| {n} | {100 * e['final_avg_acc']:.1f} | {100 * e['bwt']:+.2f} | {e['add_seconds']:.3f} | {e['redo_all_seconds']:.3f} | "
            f"{e['redo_all_seconds'] / e['add_seconds']:.1f}× | {e.get('remerge_best_static_seconds', float('nan')):.3f} | "
            f"{e.get('remerge_best_static_seconds', float('nan')) / e['add_seconds']:.1f}× |"
            for n, e in c.items()
        ]
        lines.append("")
    return "\n".join(lines)


def summary_table(results: dict) -> Table:
    table = Table(title="runtime composition: accuracy (%) with each task's own head", title_justify="left")
    for column in HEADER:
        table.add_column(column, justify="left" if column == "entry" else "right")
    n = len(results["tasks"])
    for r in router_rows(results) if "routers" in results else []:
        table.add_row(r[0], *r[1 + n :])
    return table
