"""Training cost per method on the tiny random model, as ratios against plain LoRA.

Each method trains in its own child process (``python -m lora_core.train``, one torch thread by
``lora_core.threads``) so that its peak memory (CUDA peak allocated, else process peak RSS) is its
own; plain LoRA runs first and last and the ratios use the mean of its two runs, so drift in
machine load shows up as a LoRA spread.

    .venv/bin/python benchmarks/bench_train.py [--steps 20] [--batch-size 4]

Writes ``benchmarks/results/train.json`` (with the date, machine and load) and ``train.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from _record import RESULTS_DIR, load_average, save_figure, write_result

REPO = Path(__file__).resolve().parent.parent
METHODS = {
    "lora": {"options": {"rank": 4, "alpha": 4.0}},
    "lora+te": {"method": "lora", "options": {"rank": 4, "alpha": 4.0, "train_text_encoder": True}},
    "textual_inversion": {"method": "textual_inversion", "options": {}, "learning_rate": 5e-3},
    "dreambooth": {"method": "dreambooth", "options": {}, "learning_rate": 1e-5},
    "lycoris": {"method": "lycoris", "options": {"algo": "loha"}},
}


def write_images(folder: Path, n: int = 8) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"a photo of an emoji {i}")
    return folder


def run(name: str, data: Path, root: Path, steps: int, batch_size: int) -> dict:
    values = {"method": "lora", "data": {"folder": str(data)}, "max_train_steps": steps,
              "batch_size": batch_size, "learning_rate": 1e-3, **METHODS[name]}
    config = root / f"{name}.json"
    config.write_text(json.dumps(values))
    done = subprocess.run([sys.executable, "-m", "lora_core.train", "--config", str(config), "--runs-root",
                           str(root), "--force", "--no-progress"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads((Path(done.stdout.strip().splitlines()[-1]) / "summary.json").read_text())


def figure(rows: list[dict], result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 2.6))
    names = [r["method"] for r in rows]
    ax.barh(names, [r["steps_per_s_vs_lora"] for r in rows], color="tab:blue")
    ax.axvline(1.0, color="grey", lw=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("steps/s relative to plain LoRA (rank 4)")
    return save_figure(fig, ax, result, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    load_before = load_average()
    root = Path(tempfile.mkdtemp(prefix="bench-train-"))
    data = write_images(root / "images")
    order = ["lora", *[m for m in METHODS if m != "lora"], "lora"]
    results = [(name, run(name, data, root, args.steps, args.batch_size)) for name in order]
    lora_runs = [r for name, r in results if name == "lora" and "error" not in r]
    lora_speed = np.mean([r["steps_per_s"] for r in lora_runs])
    lora_memory = np.mean([r["peak_memory_bytes"] for r in lora_runs])
    print(f"tiny random model, {args.steps} steps, batch {args.batch_size}, device {lora_runs[0]['device']}; "
          f"plain LoRA: {lora_speed:.2f} steps/s, peak {lora_memory / 2**20:.0f} MiB "
          f"({lora_runs[0]['peak_memory_kind']}); LoRA spread "
          f"{min(r['steps_per_s'] for r in lora_runs) / max(r['steps_per_s'] for r in lora_runs):.2f}")
    print(f"{'method':20s} {'steps/s vs LoRA':>16s} {'peak memory vs LoRA':>20s} {'trainable params':>17s}")
    rows = []
    for name, result in results[1:-1]:
        if "error" in result:
            print(f"{name:20s} failed: {result['error']}")
            continue
        rows.append({"method": name, "steps_per_s_vs_lora": result["steps_per_s"] / lora_speed,
                     "peak_memory_vs_lora": result["peak_memory_bytes"] / lora_memory,
                     "trainable_params": result["trainable_params"]})
        print(f"{name:20s} {rows[-1]['steps_per_s_vs_lora']:16.2f} {rows[-1]['peak_memory_vs_lora']:20.2f} "
              f"{result['trainable_params']:17,d}")
    spread = min(r["steps_per_s"] for r in lora_runs) / max(r["steps_per_s"] for r in lora_runs)
    path = write_result("train", {"rows": rows, "lora_steps_per_s": float(lora_speed), "lora_spread": spread,
                                  "steps": args.steps, "batch_size": args.batch_size}, load_before)
    figure(rows, json.loads(path.read_text()), RESULTS_DIR / "train.png")


if __name__ == "__main__":
    main()
