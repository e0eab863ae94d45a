"""Re-score the kept checkpoints of a benchmark row with a label-free criterion; print how it ranks them by AJI.

A row trained with ``--keep_scored_models true`` keeps ``train/scored/model_iteration=N.pt`` and, once the
benchmark evaluated them, ``checkpoints.csv`` (each checkpoint's true AJI). This script builds the row's
own training config (its ``spec.json``), loads each kept checkpoint into the method's networks, scores
them on the same target images with the bundle's :class:`~monai_uda.engines.label_free.LabelFreeSelection`
(the current criterion, or ``--selection_score``), and prints per checkpoint the score, the foreground
fraction and the AJI, then the Spearman rank correlation and the AJI of the checkpoint the score selects
against the last one. Nothing of the row is written.

    python scripts/rescore_selection.py OUT/runs/source_only [--selection_score agreement|entropy]
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
from pathlib import Path

from monai.bundle import ConfigParser

from monai_uda.bundle_runner import config_files
from monai_uda.engines.label_free import rank_correlation, scored_checkpoints
from monai_uda.networks.weights import load_checkpoint


def rescore(row_dir: Path, selection_score: str | None = None) -> list[dict[str, float]]:
    """``[{"iteration", "score", "foreground", "aji"}]`` of the row's kept checkpoints, in iteration order."""
    spec = json.loads((row_dir / "spec.json").read_text())
    aji = {row["checkpoint"]: float(row["aji"]) for row in csv.DictReader(open(row_dir / "checkpoints.csv"))}
    parser = ConfigParser()
    parser.read_config(config_files(spec["bundle"], "training", int(spec["spatial_dims"]), spec["preset_file"]))
    overrides = {**spec["overrides"], "dataset_dir": spec["dataset_dir"], "output_dir": tempfile.mkdtemp()}
    if selection_score:
        overrides["selection_score"] = selection_score
    parser.update(overrides)
    handler = parser.get_parsed_content("selection_handler")
    networks = parser.get_parsed_content("method").networks()
    lines = []
    for iteration, path in sorted(scored_checkpoints(row_dir / "train").items()):
        state = load_checkpoint(path)
        for name, network in networks.items():
            network.load_state_dict(state[name])
        score, foreground, _ = handler.measure()
        lines.append({"iteration": iteration, "score": score, "foreground": foreground, "aji": aji[path.name]})
        print(f"iteration {iteration:6d}  score {score:.4f}  foreground {foreground:.3f}  AJI {aji[path.name]:.3f}",
              flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("row_dir", type=Path)
    parser.add_argument("--selection_score", default=None)
    args = parser.parse_args()
    lines = rescore(args.row_dir, args.selection_score)
    best = max(lines, key=lambda line: line["score"])  # the first of equal scores, as the selection keeps it
    print(f"rank correlation {rank_correlation([x['score'] for x in lines], [x['aji'] for x in lines]):.2f} over "
          f"{len(lines)} checkpoints; selected iteration {best['iteration']} AJI {best['aji']:.3f}, "
          f"last iteration {lines[-1]['iteration']} AJI {lines[-1]['aji']:.3f}")


if __name__ == "__main__":
    main()
