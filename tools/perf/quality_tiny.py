"""`qrun quality` on tiny random-weight models with the real vocabularies: the figures of README "What 4-bit costs".

    python -m tools.perf.quality_tiny [--out DIR] [--threads 2] [--quants Q8_0,Q4_0,Q4_K_M]

Writes, per model, the tiny checkpoint the tests build (2 layers, hidden 256, the real tokenizer files of
tests/data/tokenizers, weights ~N(0, 0.05): tests/tiny_models.py), converts it with `qrun convert --from` to BF16
and each quant, then runs `qrun quality MODEL --ggufs DIR` (default text, --ctx 512, --top-k 32, reference BF16)
and prints its table. These models' weights are random: the figures show the method, not the real models' quality.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from qrun import registry
from qrun.convert.pipeline import convert_model
from qrun.convert.synthetic import TINY_OVERRIDES, write_random_checkpoint

ROOT = Path(__file__).resolve().parents[2]
TOKENIZERS_DIR = ROOT / "tests" / "data" / "tokenizers"
WEIGHT_STD = 0.05  # as tests/tiny_models.py (it explains the choice)
QRUN = [sys.executable, "-c", "import sys; from qrun.cli import main; sys.argv[0] = 'qrun'; main()"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="quality-tiny", help="working folder (default: ./quality-tiny)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quants", default="Q8_0,Q4_0,Q4_K_M")
    args = parser.parse_args()
    out = Path(args.out)
    quants = [q.strip().upper() for q in args.quants.split(",") if q.strip()]
    for spec in registry.MODELS:
        model = spec.name
        checkpoint = out / "checkpoints" / model
        if not (checkpoint / "config.json").is_file():
            write_random_checkpoint(
                model,
                checkpoint,
                tokenizer_dir=TOKENIZERS_DIR / model,
                config_overrides=TINY_OVERRIDES[model],
                seed=0,
                weight_std=WEIGHT_STD,
            )
        ggufs = out / "ggufs"
        for quant in ["BF16", *quants]:
            convert_model(model, from_dir=checkpoint, quant=quant, out_dir=ggufs, threads=args.threads)
        command = [
            "quality",
            model,
            "--quants",
            ",".join(quants),
            "--ggufs",
            str(ggufs),
            "--out",
            str(out / "results"),  # one quality-<model>.json per model
            "--threads",
            str(args.threads),
        ]
        print(f"$ qrun {' '.join(command)}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(QRUN + command, stderr=subprocess.PIPE, text=True)  # stderr: progress lines
        print(f"({time.perf_counter() - t0:.1f} s)\n", flush=True)
        if proc.returncode != 0:
            print(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed", file=sys.stderr)
            return proc.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
