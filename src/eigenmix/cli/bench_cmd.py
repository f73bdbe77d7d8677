"""``eigenmix bench merge``: the multi-task adapter-merging benchmark."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from pathlib import Path

import torch
import typer
from rich.table import Table

from eigenmix.bench.settings import BenchSettings
from eigenmix.cli.console import make_console
from eigenmix.cli.options import FORCE_HELP, described
from eigenmix.errors import InvalidInputError
from eigenmix.io.atomic import atomic_dir, destination
from eigenmix.train.lora import LoraRecipe

app = typer.Typer(help="Benchmarks on real models and data.", no_args_is_help=True)

# Options both benchmarks take (one definition each).
DATA_DIR = typer.Option(None, "--data-dir", help="A folder of tasks in the bundled JSONL format (default: bundled).")
TASKS = described(BenchSettings, "tasks", None, "--tasks", metavar="A,B")
SEED = described(BenchSettings, "seed", 0, "--seed")
CACHE_DIR = typer.Option(None, "--cache-dir", help="Trained adapters and probes (default: ~/.cache/eigenmix).")
STEPS = described(LoraRecipe, "steps", None, "--steps", min=1)
TEST_ROWS = described(BenchSettings, "test_rows", None, "--test-rows", min=0)
VAL_ROWS = described(BenchSettings, "val_rows", None, "--val-rows", min=1)
FORCE = typer.Option(False, "--force", help=FORCE_HELP)
KIND = typer.Option(
    "lora", "--kind", help="The training kind of every module (eigenmix train --kinds lists them); orthogonal: in the order of --tasks."
)


def _cache(cache_dir: Path | None) -> Path:
    from eigenmix.bench.cache import default_cache_dir

    cache = cache_dir or default_cache_dir()
    if cache.exists() and not cache.is_dir():
        raise InvalidInputError(f"--cache-dir {cache}: is not a folder")
    return cache


def _record_run(results: dict) -> None:
    """The command line and the machine, into ``results["config"]``."""
    results["config"]["command"] = shlex.join(["eigenmix", *sys.argv[1:]])
    results["config"]["machine"] = {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu": _cpu_model(),
        "torch": torch.__version__,
    }


def _names(raw: str | None) -> tuple[str, ...] | None:
    if raw is None:
        return None
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    if not names:
        raise InvalidInputError(f"empty list '{raw}'")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InvalidInputError(f"'{twice[0]}' is listed twice in '{raw}'")
    return names


@app.command("merge")
def bench_merge(
    data_dir: Path | None = DATA_DIR,
    tasks: str | None = TASKS,
    methods: str | None = described(BenchSettings, "methods", None, "--methods", metavar="M1,M2"),
    out: Path = typer.Option(Path("runs/bench-merge"), "--out", help="Folder for results.json/.md/.png, written atomically."),
    seed: int = SEED,
    quick: bool = typer.Option(False, "--quick", help="The first 3 tasks, 50 training steps, small validation/test subsets."),
    cache_dir: Path | None = CACHE_DIR,
    steps: int | None = STEPS,
    test_rows: int | None = TEST_ROWS,
    val_rows: int | None = VAL_ROWS,
    tune: bool = typer.Option(False, "--tune", help="Also the tuned entries (coefficients learned from 16-64 rows per task)."),
    tuned: str | None = typer.Option(
        None, "--tuned", metavar="E1,E2", help="Only these tuned entries (names as in the results, e.g. 'spectral+tune(distill)')."
    ),
    calibration_rows: str | None = described(BenchSettings, "calibration_rows", None, "--calibration-rows", metavar="N1,N2"),
    kind: str = KIND,
    force: bool = FORCE,
) -> None:
    """Merge per-task LoRA adapters of all-MiniLM-L6-v2 with every method and score each task."""
    from eigenmix.bench.report import write_results
    from eigenmix.bench.runner import run_benchmark
    from eigenmix.bench.settings import make_settings

    console = make_console()
    cache = _cache(cache_dir)
    dest = destination(out, overwrite=force, inputs=[p for p in (data_dir, cache) if p is not None], marker="results.json")
    settings = make_settings(
        data_dir, tasks=_names(tasks), methods=_names(methods), seed=seed, quick=quick, steps=steps,
        test_rows=test_rows, val_rows=val_rows, tune=tune or tuned is not None,
        calibration_rows=_sizes(calibration_rows), tuned=_entries(tuned), kind=kind,
    )  # fmt: skip
    results = run_benchmark(settings, data_dir, cache, console)
    _record_run(results)
    with atomic_dir(dest) as tmp:
        write_results(results, tmp)
    console.print(_table(results))
    console.print(f"results in {out}/ (results.json, results.md, results.png); {results['timing']['total_seconds']:.0f} s in all")


def _entries(raw: str | None) -> tuple[str, ...] | None:
    """Comma-separated entry names; commas inside parentheses belong to a name (``tune(sup,n=16)``)."""
    if raw is None:
        return None
    names, depth, current = [], 0, ""
    for char in raw:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            names.append(current.strip())
            current = ""
        else:
            current += char
    names = [n for n in [*names, current.strip()] if n]
    twice = sorted({n for n in names if names.count(n) > 1})
    if not names or twice:
        raise InvalidInputError(f"--tuned '{raw}': " + (f"'{twice[0]}' is listed twice" if twice else "no entry"))
    return tuple(names)


def _sizes(raw: str | None) -> tuple[int, ...] | None:
    names = _names(raw)
    if names is None:
        return None
    if not all(n.isdigit() and int(n) > 0 for n in names):
        raise InvalidInputError(f"--calibration-rows '{raw}': positive whole numbers, comma-separated")
    return tuple(int(n) for n in names)


def _cpu_model() -> str:
    """The CPU's model name (Linux), else the platform's processor string."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _table(results: dict) -> Table:
    from eigenmix.bench.report import table_rows

    tasks = results["tasks"]
    table = Table(title="accuracy (%) with each task's own head; avg norm. = mean of merged / individual", title_justify="left")
    for column in ("method", *tasks, "avg", "avg norm.", "scale"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for name, cells, scale in table_rows(results, lambda v: f"[bold]{v}[/]"):
        table.add_row(name, *cells, scale)
    return table


@app.command("compose")
def bench_compose(
    data_dir: Path | None = DATA_DIR,
    tasks: str | None = TASKS,
    parts: str | None = typer.Option(None, "--parts", metavar="P1,P2", help="Which parts: routing, cost, continual (default: all)."),
    static: list[Path] = typer.Option(
        [], "--static", help="A results.json (or its folder) of `eigenmix bench merge` with the same settings, shown beside (repeatable)."
    ),
    out: Path = typer.Option(Path("runs/bench-compose"), "--out", help="Folder for results.json/.md, written atomically."),
    seed: int = SEED,
    quick: bool = typer.Option(False, "--quick", help="The first 3 tasks, 50 training steps, small subsets (as bench merge --quick)."),
    cache_dir: Path | None = CACHE_DIR,
    steps: int | None = STEPS,
    test_rows: int | None = TEST_ROWS,
    val_rows: int | None = VAL_ROWS,
    kind: str = KIND,
    force: bool = FORCE,
) -> None:
    """Compose the merge benchmark's adapters per input: routers, cost, continual addition."""
    from eigenmix.bench.compose.report import markdown, summary_table
    from eigenmix.bench.compose.run import run_compose
    from eigenmix.bench.compose.settings import PARTS, ComposeSettings
    from eigenmix.bench.settings import make_settings

    console = make_console()
    cache = _cache(cache_dir)
    chosen = _names(parts) or PARTS
    unknown = [p for p in chosen if p not in PARTS]
    if unknown:
        raise InvalidInputError(f"--parts: unknown part '{unknown[0]}' (choose from {', '.join(PARTS)})")
    for path in static:
        if not path.exists():
            raise InvalidInputError(f"--static {path}: does not exist")
    inputs = [p for p in (data_dir, cache, *static) if p is not None]
    dest = destination(out, overwrite=force, inputs=inputs, marker="results.json")
    bench = make_settings(
        data_dir, tasks=_names(tasks), methods=("linear",), seed=seed, quick=quick, steps=steps, test_rows=test_rows, val_rows=val_rows,
        kind=kind,
    )
    settings = ComposeSettings(bench=bench, parts=chosen, **({"continual_rows": 60, "cost_ks": (2, 4), "cost_repeats": 3} if quick else {}))
    results = run_compose(settings, data_dir, cache, static, console)
    _record_run(results)
    with atomic_dir(dest) as tmp:
        (tmp / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (tmp / "results.md").write_text(markdown(results))
    console.print(summary_table(results))
    console.print(f"results in {out}/ (results.json, results.md); {results['timing']['total_seconds']:.0f} s in all")


VISION_PARTS = ("merge", "routing", "continual", "concepts")


@app.command("vision")
def bench_vision(
    tasks: str | None = TASKS,
    methods: str | None = described(BenchSettings, "methods", None, "--methods", metavar="M1,M2"),
    parts: str | None = typer.Option(
        None, "--parts", metavar="P1,P2", help="Which parts: merge, routing, continual, concepts (default: all)."
    ),
    out: Path = typer.Option(Path("runs/bench-vision"), "--out", help="Folder for the parts' results, written atomically."),
    seed: int = SEED,
    quick: bool = typer.Option(False, "--quick", help="2 tasks, 10 training steps at 32 px, small subsets: a smoke run."),
    cache_dir: Path | None = CACHE_DIR,
    steps: int | None = STEPS,
    test_rows: int | None = TEST_ROWS,
    val_rows: int | None = VAL_ROWS,
    tuned: str | None = typer.Option(
        None, "--tuned", metavar="E1,E2", help="Tuned entries of the merge part (default: every one; 'none': none)."
    ),
    calibration_rows: str | None = described(BenchSettings, "calibration_rows", None, "--calibration-rows", metavar="N1,N2"),
    kind: str = KIND,
    force: bool = FORCE,
) -> None:
    """The same protocol on images: conv LoRAs of EfficientNet-Lite0 on Fashion-MNIST and MNIST tasks,
    merged by every method (merge/), routed and added one at a time (compose/), and a task composed
    from its concept modules (concepts/)."""
    from eigenmix.bench.compose.report import markdown, summary_table
    from eigenmix.bench.compose.run import run_compose
    from eigenmix.bench.compose.settings import ComposeSettings
    from eigenmix.bench.report import write_results
    from eigenmix.bench.runner import run_benchmark
    from eigenmix.bench.settings import make_settings

    console = make_console()
    cache = _cache(cache_dir)
    chosen = _names(parts) or VISION_PARTS
    unknown = [p for p in chosen if p not in VISION_PARTS]
    if unknown:
        raise InvalidInputError(f"--parts: unknown part '{unknown[0]}' (choose from {', '.join(VISION_PARTS)})")
    dest = destination(out, overwrite=force, inputs=[cache], marker="summary.json")
    entries = () if tuned == "none" else _entries(tuned)
    settings = make_settings(
        None, tasks=_names(tasks), methods=_names(methods), seed=seed, quick=quick, steps=steps, test_rows=test_rows,
        val_rows=val_rows, tune=not entries and tuned != "none", tuned=entries or None,
        calibration_rows=_sizes(calibration_rows), suite="vision", kind=kind,
    )  # fmt: skip
    summary: dict = {"parts": list(chosen), "seconds": {}}
    with atomic_dir(dest) as tmp:
        static: list[Path] = []
        if "merge" in chosen:
            results = run_benchmark(settings, None, cache, console)
            _record_run(results)
            (tmp / "merge").mkdir()
            write_results(results, tmp / "merge")
            static.append(tmp / "merge")
            summary["seconds"]["merge"] = results["timing"]["total_seconds"]
            console.print(_table(results))
        compose_parts = tuple(p for p in chosen if p in ("routing", "continual"))
        if compose_parts:
            small = {"continual_rows": 60, "orders": 2, "temperatures": (0.2,), "top_ks": (None,)} if quick else {}
            compose = ComposeSettings(bench=settings.model_copy(update={"methods": ("linear",), "tuned": ()}), parts=compose_parts, **small)
            results = run_compose(compose, None, cache, static, console)
            _record_run(results)
            for entry in results["static"].values():  # beside compose/ in this output folder
                entry["from"] = "merge/results.json"
            (tmp / "compose").mkdir()
            (tmp / "compose" / "results.json").write_text(json.dumps(results, indent=2) + "\n")
            (tmp / "compose" / "results.md").write_text(markdown(results))
            summary["seconds"]["compose"] = results["timing"]["total_seconds"]
            console.print(summary_table(results))
        if "concepts" in chosen:
            from eigenmix.bench import concepts
            from eigenmix.bench.runner import evaluator

            size = {"per_class": 16, "draws": 1} if quick else {}
            results = concepts.run_concepts(settings, evaluator(settings), cache, console, **size)
            (tmp / "concepts").mkdir()
            (tmp / "concepts" / "results.json").write_text(json.dumps(results, indent=2) + "\n")
            (tmp / "concepts" / "results.md").write_text(concepts.markdown(results))
            summary["seconds"]["concepts"] = results["seconds"]
            console.print(concepts.markdown(results))
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    console.print(f"results in {out}/ (merge/, compose/, concepts/, summary.json); {sum(summary['seconds'].values()):.0f} s in all")


@app.command("bridge")
def bench_bridge(
    out: Path = typer.Option(Path("runs/bench-bridge"), "--out", help="Folder for results.json, .md and .png, written atomically."),
    seeds: int = typer.Option(3, "--seeds", min=1, help="Seeded seen / unseen splits of ImageNet's classes."),
    unseen: int = typer.Option(200, "--unseen", min=2, max=500, help="Unseen classes per split."),
    zero_shot_images: int = typer.Option(1000, "--zero-shot-images", min=10, help="Fashion-MNIST and MNIST test images classified."),
    quick: bool = typer.Option(False, "--quick", help="1 split, 100 zero-shot images, names without prompts: a smoke run."),
    force: bool = FORCE,
) -> None:
    """The spectral bridge between EfficientNet-Lite0 and all-MiniLM-L6-v2 on ImageNet's classes, beside the baselines."""
    from eigenmix.bench.bridge import BridgeBenchSettings, markdown, run_bridge_bench, write_results

    console = make_console()
    dest = destination(out, overwrite=force, inputs=[], marker="results.json")
    small = {"seeds": 1, "zero_shot_images": 100, "templates": ("{}",)} if quick else {"seeds": seeds, "zero_shot_images": zero_shot_images}
    settings = BridgeBenchSettings(unseen=unseen, **small)
    results = run_bridge_bench(settings, console.print)
    results["config"] = {"settings": settings.model_dump(mode="json")}
    _record_run(results)
    with atomic_dir(dest) as tmp:
        write_results(results, tmp)
    console.print(markdown(results))
    console.print(f"results in {out}/ (results.json, results.md, results.png); {results['seconds']:.0f} s")
