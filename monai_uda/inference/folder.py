"""The folder side of every runner: the inputs of a folder, the names of their outputs, the run loop.

:class:`ImageFolder` lists the inputs (:func:`monai_uda.data.io.list_images`), names each input's
outputs (:func:`output_stems`), refuses a run that would overwrite an input or write one output
twice before anything is written (:func:`check_outputs`) and segments the inputs in turn.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from monai_uda.data.io import list_images, stem_of
from monai_uda.errors import UDAInputError

__all__ = ["ImageFolder", "check_outputs", "folder_output_names", "output_stems"]


def output_stems(inputs: Iterable[Path]) -> dict[Path, str]:
    """The name each input's outputs start with: its stem, or ``<stem>_<ext>`` when inputs share a stem.

    ``x.png`` and ``x.tif`` in one folder would otherwise both write ``x_mask.png``, the second
    replacing the first; they get ``x_png_*`` and ``x_tif_*`` (``x.nii.gz``: ``x_nii_gz_*``). A lone
    ``x.png`` keeps ``x_*``, the names evaluation pairs with ground truth ``x``.
    """
    inputs = [Path(p) for p in inputs]
    counts: dict[str, int] = {}
    for path in inputs:
        counts[stem_of(path)] = counts.get(stem_of(path), 0) + 1
    stems = {}
    for path in inputs:
        stem = stem_of(path)
        stems[path] = (
            stem if counts[stem] == 1 else f"{stem}_{path.name[len(stem) :].lstrip('.').replace('.', '_').lower()}"
        )
    return stems


def check_outputs(output_dir: str | Path, outputs: Iterable[Path], inputs: Iterable[Path], kind: str = "image") -> None:
    """Refuse to run when an output would overwrite an input or another output, or ``output_dir`` is not writable.

    Shared by the folder runners (:class:`ImageFolder`,
    :class:`~monai_uda.inference.synthesis.FolderSynthesizer`); creates ``output_dir``. Runs before anything
    is written, so a refused run leaves the folder as it was.

    Args:
        output_dir: the output folder.
        outputs: every path that will be written.
        inputs: every input file.
        kind: what the inputs are, for the message (``"image"``, ``"mask"``).

    Raises:
        UDAInputError: an output path is an input or is written twice, or the folder cannot be created or written.
    """
    output_dir = Path(output_dir)
    input_set = {Path(p).resolve() for p in inputs}
    seen: set[Path] = set()
    for out in outputs:
        resolved = Path(out).resolve()
        if resolved in input_set:
            raise UDAInputError(
                f"output {Path(out).name} would overwrite an input {kind}; choose another output_dir", out
            )
        if resolved in seen:
            raise UDAInputError(f"two inputs would write output {Path(out).name}; rename one of them", out)
        seen.add(resolved)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_dir):
            pass
    except OSError as exc:
        raise UDAInputError(f"output folder is not writable ({exc.strerror or exc})", output_dir) from exc


def folder_output_names(
    mask_ext: str, instance_ext: str, overlay: bool = False, table: bool = False
) -> Callable[[str], dict[str, str]]:
    """Output names of one input stem: ``<stem>_mask<mask_ext>``, ``<stem>_instances<instance_ext>``,
    with ``overlay`` ``<stem>_overlay.png`` and with ``table`` ``<stem>_nuclei.csv``."""

    def names(stem: str) -> dict[str, str]:
        out = {"mask": f"{stem}_mask{mask_ext}", "instances": f"{stem}_instances{instance_ext}"}
        if overlay:
            out["overlay"] = f"{stem}_overlay.png"
        if table:
            out["table"] = f"{stem}_nuclei.csv"
        return out

    return names


class ImageFolder:
    """The inputs of ``input_dir`` and the paths of their outputs in ``output_dir``.

    Args:
        input_dir: folder of images (see :func:`monai_uda.data.io.list_images`).
        output_dir: folder for the results (created).
        names: output names of an input stem, e.g. :func:`folder_output_names`.
    """

    def __init__(self, input_dir: str | Path, output_dir: str | Path, names: Callable[[str], dict[str, str]]) -> None:
        self.input_dir = Path(input_dir)
        self.output_dir = Path(output_dir)
        self.names = names
        self.stems: dict[Path, str] = {}

    def stem(self, image_path: Path) -> str:
        """The output name of an input (:func:`output_stems` of the run's inputs)."""
        return self.stems.get(Path(image_path)) or stem_of(image_path)

    def output_paths(self, image_path: Path) -> dict[str, Path]:
        """Every output path of one input."""
        return {key: self.output_dir / name for key, name in self.names(self.stem(image_path)).items()}

    def record(self, image_path: Path, paths: dict[str, Path]) -> dict[str, Any]:
        """The start of a run's record of one input: ``stem``, ``image`` and the output paths."""
        return {"stem": self.stem(image_path), "image": str(image_path), **{key: str(p) for key, p in paths.items()}}

    def run(self, segment_file: Callable[[Path], dict[str, Any]]) -> list[dict[str, Any]]:
        """``segment_file`` on every input of ``input_dir``, once the outputs are checked; returns its records.

        Raises:
            UDAInputError: empty input folder, output clashing with an input, unwritable output folder.
        """
        inputs = list_images(self.input_dir)
        if not inputs:
            raise UDAInputError("no images found", self.input_dir)
        self.stems = output_stems(inputs)
        check_outputs(self.output_dir, [out for p in inputs for out in self.output_paths(p).values()], inputs)
        start = time.perf_counter()
        with tqdm(inputs, desc="segmenting", unit="image") as progress:  # closed (line ended) also on errors
            records = [segment_file(p) for p in progress]
        total = sum(r["n_instances"] for r in records)
        seconds = time.perf_counter() - start
        print(f"segmented {len(records)} images, {total} nuclei in {seconds:.1f} s -> {self.output_dir}")
        return records
