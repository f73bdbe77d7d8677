"""The multi-task merge benchmark: per-task LoRA adapters on all-MiniLM-L6-v2, merged by
every method, each task scored with its own head (needs the ``bench`` extra)."""

from eigenmix.bench.cache import default_cache_dir
from eigenmix.bench.report import markdown_table, write_results
from eigenmix.bench.runner import run_benchmark
from eigenmix.bench.settings import BenchSettings, make_settings

__all__ = ["BenchSettings", "default_cache_dir", "make_settings", "markdown_table", "run_benchmark", "write_results"]
