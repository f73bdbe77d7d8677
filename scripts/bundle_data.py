"""Build the compact copy of the 8 tasks that ships inside the package.

    python scripts/bundle_data.py ../shared/data src/eigenmix/data/tasks

At most 4,000 train and 1,000 test rows per task, stratified by label with
largest-remainder rounding, seed 0 (``random.Random(0)``), rows kept in shuffled order.
Re-running it reproduces the committed files byte for byte.
"""

from __future__ import annotations

import json
import random
import sys
from collections import defaultdict
from pathlib import Path

LIMITS = {"train": 4000, "test": 1000}


def stratified(rows: list[dict], limit: int, rng: random.Random) -> list[dict]:
    """Up to ``limit`` rows keeping every label's share (largest-remainder rounding)."""
    if len(rows) <= limit:
        picked = list(rows)
        rng.shuffle(picked)
        return picked
    by_label: dict[int, list[dict]] = defaultdict(list)
    for row in rows:
        by_label[row["label"]].append(row)
    labels = sorted(by_label)
    exact = {lab: limit * len(by_label[lab]) / len(rows) for lab in labels}
    quota = {lab: int(exact[lab]) for lab in labels}
    by_remainder = sorted(labels, key=lambda lab: (-(exact[lab] - quota[lab]), lab))
    for lab in by_remainder[: limit - sum(quota.values())]:
        quota[lab] += 1
    picked = [row for lab in labels for row in rng.sample(by_label[lab], quota[lab])]
    rng.shuffle(picked)
    return picked


def main(src: Path, dst: Path) -> None:
    meta = json.loads((src / "tasks.json").read_text())
    out_meta: dict = {"seed": 0, "source": "shared/data (see README.md)", "tasks": {}}
    for task in meta["recommended"]:
        info = meta["tasks"][task]
        out_meta["tasks"][task] = {"input": info["input"], "label_names": info["label_names"]}
        for split, limit in LIMITS.items():
            rows = [json.loads(line) for line in (src / task / f"{split}.jsonl").read_text().splitlines() if line]
            picked = stratified(rows, limit, random.Random(0))
            (dst / task).mkdir(parents=True, exist_ok=True)
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in picked)
            (dst / task / f"{split}.jsonl").write_text(text, encoding="utf-8")
            counts = [sum(r["label"] == k for r in picked) for k in range(len(info["label_names"]))]
            out_meta["tasks"][task][split] = {"rows": len(picked), "source_rows": len(rows), "label_counts": counts}
    (dst / "tasks.json").write_text(json.dumps(out_meta, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
