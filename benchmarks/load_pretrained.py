"""Loading a pretrained folder: nlpkit's `from_pretrained` versus `transformers.AutoModel.from_pretrained`.

Each load runs in a fresh child process (imports done before the clock
starts, so only the load is timed), nlpkit and transformers alternating, and
the child reports its wall time for the load and its peak resident memory
(`ru_maxrss`, which includes the imports both sides share). Medians over
`--repeats` loads per side. Both load in float32 on the CPU; after loading
the script checks once that both give the same hidden states (max abs diff).

Run from the repository root (needs `transformers`, the `test` extra):

    python benchmarks/load_pretrained.py --folder ../shared/models/all-minilm-l6-v2 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from _children import peak_rss_mib, run_child

DEFAULT_FOLDER = Path(__file__).resolve().parents[1].parent / "shared" / "models" / "all-minilm-l6-v2"


def child(side: str, folder: str) -> None:
    import torch
    import transformers

    import nlpkit.backbones  # noqa: F401  (imports outside the timed region on both sides)

    torch.set_grad_enabled(False)
    start = time.perf_counter()
    if side == "nlpkit":
        model = nlpkit.backbones.from_pretrained(folder)
    else:
        model = transformers.AutoModel.from_pretrained(folder)
    seconds = time.perf_counter() - start
    ids = torch.tensor([[101, 7592, 2088, 2003, 1037, 3231, 102]])
    hidden = model(ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    torch.save(hidden, f"/tmp/nlpkit-load-bench-{side}.pt")
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_rss_mib()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default=str(DEFAULT_FOLDER))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", choices=["nlpkit", "transformers"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.folder)
        return
    if not Path(args.folder).is_dir():
        sys.exit(f"no folder {args.folder}; pass --folder")
    results: dict[str, list[dict[str, float]]] = {"nlpkit": [], "transformers": []}
    for repeat in range(args.repeats):
        order = ["nlpkit", "transformers"] if repeat % 2 == 0 else ["transformers", "nlpkit"]
        for side in order:
            results[side].append(run_child(__file__, ["--child", side, "--folder", args.folder]))
    import torch

    diff = (torch.load("/tmp/nlpkit-load-bench-nlpkit.pt") - torch.load("/tmp/nlpkit-load-bench-transformers.pt")).abs().max()
    print(f"folder: {args.folder}   repeats: {args.repeats}   hidden-state max abs diff: {diff.item():.2e}")
    print(f"{'side':<14}{'load s (median)':>18}{'peak RSS MB (median)':>24}")
    medians = {}
    for side, runs in results.items():
        medians[side] = statistics.median(r["seconds"] for r in runs)
        print(f"{side:<14}{medians[side]:>18.3f}{statistics.median(r['peak_rss_mb'] for r in runs):>24.0f}")
    print(f"ratio nlpkit / transformers (load time): {medians['nlpkit'] / medians['transformers']:.2f}")


if __name__ == "__main__":
    main()
