"""Full fine-tunes at scale: eigenmix against mergekit on the same machine, same inputs, one run.

    .venv/bin/python benchmarks/merge_scale.py --json benchmarks/results/merge_scale.json [--size 1b] [--threads 2]

Synthetic fine-tunes of a real architecture (Llama-shaped; ``1b``: TinyLlama's shapes, 1.1 B
parameters; ``7b``: Llama-2-7B's): a random bf16 base and 3 fine-tunes (base + seeded noise),
written tensor by tensor as sharded safetensors with an index and a config.json. Each merge
runs in a child process under ``/usr/bin/time -v`` (wall time, peak RSS = the child's
VmHWM): ``task_arithmetic``, ``ties`` and ``dare_ties`` from one mergekit YAML through
``mergekit-yaml`` (``--lazy-unpickle``, ``--out-shard-size 1B``, ``--no-copy-tokenizer``, the
same threads) and through ``eigenmix merge`` (the same file, read as mergekit's), both
computing in float32 (``dtype: float32``: mergekit computes in the dtype it is given) and
writing bf16 like their inputs (``out_dtype: bfloat16``); the outputs are compared tensor by
tensor (max relative difference; ``dare_ties`` draws its own masks in each tool, so its
outputs are not comparable and only time and memory are reported). Then ``tsv`` at a
randomized rank (mergekit has no such method) and the Ray executor with 1 and 2 workers on
the same set. The page cache is dropped before every run where this process may (root), so
each tool reads its inputs from the disk, as it must for a model larger than memory; the
disk's cold sequential read speed is measured once (``cat`` of one shard).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from bench_common import write_result

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
SIZES = {  # hidden, intermediate, layers, heads, key/value heads (vocabulary 32,000)
    "1b": dict(zip(("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads"),
                   (2048, 5632, 22, 32, 4), strict=True), vocab_size=32000),
    "tiny": dict(zip(("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads"),
                     (64, 128, 2, 4, 2), strict=True), vocab_size=256),  # a smoke test of the script
    "7b": dict(zip(("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads"),
                   (4096, 11008, 32, 32, 32), strict=True), vocab_size=32000),
}  # fmt: skip


def shapes(c: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor of a Llama checkpoint and its shape, in the order transformers saves them."""
    h, i, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    kv = h * c["num_key_value_heads"] // c["num_attention_heads"]
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h)}
    for n in range(c["num_hidden_layers"]):
        p = f"model.layers.{n}."
        out |= {p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h), p + "self_attn.v_proj.weight": (kv, h),
                p + "self_attn.o_proj.weight": (h, h), p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h),
                p + "mlp.down_proj.weight": (h, i), p + "input_layernorm.weight": (h,),
                p + "post_attention_layernorm.weight": (h,)}  # fmt: skip
    return out | {"model.norm.weight": (h,), "lm_head.weight": (v, h)}


def write_checkpoint(folder: Path, c: dict, seed: int, base: Path | None) -> None:
    """A bf16 checkpoint in ~2 GB shards: the base (random, std 0.02; norms at 1) or, with
    ``base``, that base plus seeded noise of std 0.002 (a fine-tune), one tensor at a time."""
    from transformers import LlamaConfig

    from eigenmix.io import CheckpointReader
    from eigenmix.io.full_model import INDEX, plan_shards, shard_names
    from eigenmix.io.stream_writer import StreamWriter

    folder.mkdir(parents=True)
    names = shapes(c)
    groups = plan_shards(names, 1_000_000_000)
    files = shard_names(len(groups))
    g = torch.Generator().manual_seed(seed)
    reader = CheckpointReader(base) if base is not None else None
    for file, group in zip(files, groups, strict=True):
        with StreamWriter(folder / file, group, metadata={"format": "pt"}) as w:
            for name in group:
                if reader is not None:
                    t = (reader.get(name).float() + 0.002 * torch.randn(names[name], generator=g)).to(torch.bfloat16)
                elif len(names[name]) == 1:
                    t = torch.ones(names[name], dtype=torch.bfloat16)
                else:
                    t = (0.02 * torch.randn(names[name], generator=g)).to(torch.bfloat16)
                w.add(name, t)
    if len(files) > 1:
        weight_map = {n: files[k] for k, grp in enumerate(groups) for n in grp}
        (folder / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = LlamaConfig(**c, torch_dtype="bfloat16", tie_word_embeddings=False)
    config.architectures = ["LlamaForCausalLM"]  # what mergekit reads the architecture from
    config.save_pretrained(str(folder))


def drop_caches() -> bool:
    """Write back and drop the page cache (root only): the next run reads from the disk."""
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
    except OSError:
        return False
    return True


def read_speed(file: Path) -> float:
    """Cold sequential read speed of ``file`` in MB/s (the cache dropped first, where allowed)."""
    drop_caches()
    start = time.perf_counter()
    subprocess.run(["cat", str(file)], stdout=subprocess.DEVNULL, check=True)
    return round(file.stat().st_size / 1e6 / (time.perf_counter() - start), 1)


def warm(folders: list[Path]) -> None:
    """Read every input file once, so the next run finds them in the page cache."""
    for file in sorted(f for folder in folders for f in folder.glob("*.safetensors")):
        subprocess.run(["cat", str(file)], stdout=subprocess.DEVNULL, check=True)


def timed(cmd: list[str], threads: int, inputs: list[Path] | None = None) -> dict:
    """Run ``cmd`` in a child under GNU time: wall seconds and peak RSS (GB). The page cache
    is dropped first, or with ``inputs`` filled with them (a warm run)."""
    drop_caches()
    if inputs is not None:
        warm(inputs)
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TRANSFORMERS_VERBOSITY": "error",
           "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PATH": str(BIN) + ":/usr/bin:/bin"}  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed: {done.stderr[-2000:]}")
    peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))  # type: ignore[union-attr]
    return {"seconds": round(seconds, 1), "peak_rss_gb": round(peak / 1024**2, 3)}


def max_rel_diff(a: Path, b: Path) -> float:
    from eigenmix.io import CheckpointReader

    worst = 0.0
    with CheckpointReader(a) as ra, CheckpointReader(b) as rb:
        for name in ra.keys():  # noqa: SIM118
            x, y = ra.get(name).double(), rb.get(name).double()
            worst = max(worst, float((x - y).norm() / max(float(x.norm()), 1e-30)))
    return worst


def digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every tensor's bytes (``--compare digests``: one output on disk at a time)."""
    from eigenmix.io import CheckpointReader

    with CheckpointReader(folder) as reader:
        return {n: hashlib.sha256(reader.get(n).view(torch.uint8).numpy()).hexdigest() for n in reader.keys()}  # noqa: SIM118


def identical(a: Path, b: Path) -> bool:
    """Every tensor of the two outputs equal, bit for bit."""
    from eigenmix.io import CheckpointReader

    with CheckpointReader(a) as ra, CheckpointReader(b) as rb:
        return ra.keys() == rb.keys() and all(torch.equal(ra.get(n), rb.get(n)) for n in ra.keys())  # noqa: SIM118


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--size", choices=sorted(SIZES), default="1b")
    parser.add_argument("--methods", default="task_arithmetic,ties,dare_ties")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("runs/merge_scale"))
    parser.add_argument("--tsv-rank", type=int, default=64)
    parser.add_argument("--skip", default="", help="parts to skip: tsv,ray")
    parser.add_argument("--compare", choices=("values", "digests"), default="values",
                        help="outputs compared tensor by tensor, or by per-tensor digests (one output on disk at a time)")  # fmt: skip
    parser.add_argument(
        "--cache", choices=("cold", "warm"), default="cold", help="drop the page cache before each run, or fill it with the inputs"
    )
    args = parser.parse_args()
    c = SIZES[args.size]
    root = args.workdir / args.size
    start = time.perf_counter()
    if not (root / "ft2").is_dir():
        shutil.rmtree(root, ignore_errors=True)
        write_checkpoint(root / "base", c, 0, None)
        for k in range(3):
            write_checkpoint(root / f"ft{k}", c, 100 + k, root / "base")
    setup = round(time.perf_counter() - start, 1)
    params = sum(int(torch.Size(s).numel()) for s in shapes(c).values())
    shard = sorted((root / "ft0").glob("*.safetensors"))[0]
    results: dict = {"size": args.size, "parameters": params, "threads": args.threads, "setup_seconds": setup, "cache": args.cache,
                     "page_cache_dropped": drop_caches(), "disk_read_mb_per_s": read_speed(shard), "methods": {}}  # fmt: skip
    inputs = [root / "base", *(root / f"ft{k}" for k in range(3))] if args.cache == "warm" else None
    for method in [m for m in args.methods.split(",") if m]:
        model_params = {"weight": 1.0, **({"density": 0.5} if method != "task_arithmetic" else {})}
        config = {"merge_method": method, "base_model": str((root / "base").resolve()), "dtype": "float32", "out_dtype": "bfloat16",
                  "parameters": {"lambda": 0.5} if method == "task_arithmetic" else {},
                  "models": [{"model": str((root / f"ft{k}").resolve()), "parameters": model_params} for k in range(3)]}  # fmt: skip
        cfg = root / f"{method}.yml"
        cfg.write_text(yaml.safe_dump(config))
        row = {}
        for tool in ("mergekit", "eigenmix"):
            out = root / f"out-{tool}-{method}"
            shutil.rmtree(out, ignore_errors=True)
            cmd = ([str(BIN / "mergekit-yaml"), str(cfg), str(out), "--lazy-unpickle", "--out-shard-size", "1B", "--no-copy-tokenizer",
                    "--num-threads", str(args.threads)] if tool == "mergekit"
                   else [str(BIN / "eigenmix"), "merge", str(cfg), "--out", str(out), "--out-shard-size", "1B",
                         "--threads", str(args.threads)])  # fmt: skip
            row[tool] = timed(cmd, args.threads, inputs)
            print(method, tool, row[tool], flush=True)
            if args.compare == "digests":
                row[f"{tool}_digests"] = digests(out)
                shutil.rmtree(out)
        if method != "dare_ties" and args.compare == "values":
            row["max_relative_difference"] = max_rel_diff(root / f"out-mergekit-{method}", root / f"out-eigenmix-{method}")
        elif method != "dare_ties":
            a, b = row.pop("mergekit_digests"), row.pop("eigenmix_digests")
            differing = sorted(n for n in a if a[n] != b.get(n))
            row["identical_tensors"] = f"{len(a) - len(differing)} of {len(a)}"
            row["max_relative_difference"] = 0.0 if not differing and a.keys() == b.keys() else None  # unknown unless all are equal
            row["differing_tensors"] = differing[:5]
        row["time_ratio_eigenmix_over_mergekit"] = round(row["eigenmix"]["seconds"] / row["mergekit"]["seconds"], 3)
        row["rss_ratio_eigenmix_over_mergekit"] = round(row["eigenmix"]["peak_rss_gb"] / row["mergekit"]["peak_rss_gb"], 3)
        results["methods"][method] = {k: v for k, v in row.items() if not k.endswith("_digests")}
        write_result(args.json, {**results, "partial": True})  # each method as soon as it is measured
        for tool in ("mergekit", "eigenmix"):
            shutil.rmtree(root / f"out-{tool}-{method}", ignore_errors=True)
    native = {"base_model": str((root / "base").resolve()), "modules": [{"path": str((root / f"ft{k}").resolve())} for k in range(3)],
              "output": {"kind": "full", "shard_size": "1B"}}  # fmt: skip
    if "tsv" not in args.skip:
        cfg = root / "tsv.yaml"
        cfg.write_text(yaml.safe_dump({**native, "method": "tsv", "dense_rank": args.tsv_rank}))
        results["tsv"] = {"dense_rank": args.tsv_rank, **timed([str(BIN / "eigenmix"), "merge", str(cfg), "--out", str(root / "out-tsv"),
                                                                "--threads", str(args.threads)], args.threads, inputs)}  # fmt: skip
        print("tsv", results["tsv"], flush=True)
        write_result(args.json, {**results, "partial": True})
        shutil.rmtree(root / "out-tsv", ignore_errors=True)
    if "ray" not in args.skip:  # ties, one thread per layer: the local executor, then Ray with 1 and 2 workers
        results["ray"] = {"method": "ties", "threads_per_layer": 1}
        cfg = root / "ray.yaml"
        cfg.write_text(yaml.safe_dump({**native, "method": "ties", "parameters": {"density": 0.5}}))
        for workers in (0, 1, 2):
            executor = ["--executor", "local"] if workers == 0 else ["--executor", "ray"]
            if workers:
                cfg.write_text(yaml.safe_dump({**native, "method": "ties", "parameters": {"density": 0.5},
                                               "executor": {"kind": "ray", "workers": workers}}))  # fmt: skip
            out = root / f"out-ray{workers}"
            shutil.rmtree(out, ignore_errors=True)
            key = "local" if workers == 0 else str(workers)
            results["ray"][key] = timed(
                [str(BIN / "eigenmix"), "merge", str(cfg), "--out", str(out), "--threads", "1", *executor], 1, inputs
            )
            if workers:
                results["ray"][key]["bit_identical_to_local"] = identical(root / "out-ray0", out)
                shutil.rmtree(out, ignore_errors=True)
            print("ray", key, results["ray"][key], flush=True)
        shutil.rmtree(root / "out-ray0", ignore_errors=True)
        results["ray"]["speed_up_2_over_1"] = round(results["ray"]["1"]["seconds"] / results["ray"]["2"]["seconds"], 2)
    results["total_seconds"] = round(time.perf_counter() - start, 1)
    results["command"] = "python benchmarks/merge_scale.py " + " ".join(sys.argv[1:])
    write_result(args.json, results)


if __name__ == "__main__":
    main()
