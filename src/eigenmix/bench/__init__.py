"""The multi-task merge benchmark: per-task LoRA adapters on all-MiniLM-L6-v2, merged by
every method, each task scored with its own head (needs the ``bench`` extra).

``settings`` (what decides the numbers), ``cache`` (trained adapters and probes), ``runner``
(the protocol), ``tuned`` (the tuned entries), ``report`` (results.json/.md/.png). Import
them by name; this package imports nothing on its own, so the CLI starts fast.
"""
