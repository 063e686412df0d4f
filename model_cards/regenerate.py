"""Regenerate ``model_cards/``: the cards the reference runs write, each beside the inputs it was rendered from.

Each reference run is the recipe and config the README names, at a tiny budget (the flags after the config, which
the card's "Reproduce" line records), so the whole set takes minutes on a 2-core CPU. Its card is what the package's
writer puts in the run's output folder; this script keeps a copy (``<run>/README.md``) and the inputs the writer
recorded for it (``<run>/card_inputs.json``, through ``HF_ADASAM_CARD_INPUTS``) and checks that the template renders
exactly that card from them. ``tests/test_cards.py`` re-renders every committed card from its inputs, so a change
to the template or the writer shows up as a failing test until the cards are regenerated.

    python model_cards/regenerate.py             # train the reference runs (tiny budgets) and write their cards
    python model_cards/regenerate.py --only sst2-minilm-adasam_ae
    python model_cards/regenerate.py --render    # re-render the committed cards from their recorded inputs
    python model_cards/regenerate.py --full      # the reference budgets instead (the main job alone: ~2 min idle)

The runs write their checkpoints to ``runs/model_cards/<run>/`` (ignored by git).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from hf_adasam.transformers_integration.card import render_card  # noqa: E402

# run name (= the config's output folder name) -> (the command after `python`, run from the repository root; the
# flags that shrink it to a tiny budget, left out with --full)
RUNS: dict[str, tuple[list[str], list[str]]] = {
    # the README's main job (GLUE SST-2, MiniLM-L6, AdaSAM + AE-SAM): 256 of its 3000 sentences, one epoch
    "sst2-minilm-adasam_ae": (
        ["recipes/glue/run_glue.py", "recipes/glue/configs/sst2_minilm_adasam_ae.json"],
        ["--max_train_samples", "256", "--num_train_epochs", "1", "--max_eval_samples", "256", "--logging_steps", "4"]),
    # the translation recipe's offline config (Multi30k en-de, random-init t5-small shape): 8 of its 200 steps
    "multi30k-en-de-t5-small-random-adasam": (
        ["recipes/translation/run_translation.py", "recipes/translation/configs/multi30k_en_de_t5_small_offline.json"],
        ["--max_train_samples", "128", "--max_steps", "8", "--max_eval_samples", "16", "--val_max_target_length", "32",
         "--logging_steps", "4"]),
    # TRL: LoRA SFT of a small causal LM with SAM (skipped where recipes/trl/sft_lora.py is not in this checkout)
    "multi30k-en-sft-lora-adasam": (
        ["recipes/trl/sft_lora.py", "recipes/trl/configs/multi30k_en_sft_lora_adasam.json"],
        ["--max_train_samples", "256", "--max_eval_samples", "64", "--max_steps", "8", "--logging_steps", "4"]),
}


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def regenerate(name: str, command: list[str]) -> float | None:
    """Train run ``name``, keep its card and recorded inputs; the wall time (None: its script is not here)."""
    if not (ROOT / command[0]).is_file():
        print(f"{name}: skipped, {command[0]} is not in this checkout", flush=True)
        return None
    out_dir = f"runs/model_cards/{name}"
    dest = HERE / name
    dest.mkdir(exist_ok=True)
    inputs = dest / "card_inputs.json"
    inputs.unlink(missing_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_ADASAM_CARD_INPUTS": str(inputs)}
    t0 = time.perf_counter()
    shutil.rmtree(ROOT / out_dir, ignore_errors=True)  # a fresh run, not a resumed one
    subprocess.run([sys.executable, *command, "--output_dir", out_dir], cwd=ROOT, env=env, check=True)
    wall = time.perf_counter() - t0
    written = (ROOT / out_dir / "README.md").read_text(encoding="utf-8")
    recorded = json.loads(inputs.read_text(encoding="utf-8"))
    _write(inputs, json.dumps(recorded, indent=2, ensure_ascii=False) + "\n")
    card = render_card(recorded)
    if card != written:
        raise SystemExit(f"{name}: the card rendered from the recorded inputs differs from the run's own card")
    _write(dest / "README.md", card)
    print(f"{name}: {wall:.0f} s, card in {dest.relative_to(ROOT)}/README.md", flush=True)
    return wall


def render_all() -> None:
    for inputs in sorted(HERE.glob("*/card_inputs.json")):
        _write(inputs.parent / "README.md", render_card(json.loads(inputs.read_text(encoding="utf-8"))))
        print(f"rendered {inputs.parent.relative_to(ROOT)}/README.md")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--render", action="store_true", help="re-render the committed cards, no training")
    parser.add_argument("--only", choices=sorted(RUNS), action="append", help="regenerate these runs only")
    parser.add_argument("--full", action="store_true", help="the reference budgets, not the tiny ones")
    opts = parser.parse_args()
    if opts.render:
        render_all()
        return
    t0 = time.perf_counter()
    for name in opts.only or RUNS:
        command, budget = RUNS[name]
        regenerate(name, command if opts.full else command + budget)
    print(f"total: {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
