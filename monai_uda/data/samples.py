"""Built-in sample images and a tiny ready-to-train sample dataset.

With the ``[samples]`` extra installed (the ``stardist`` wheel) the samples are real images
shipped in that wheel's data folder; the package itself is never imported (it would pull in
TensorFlow), only its files are read:

* ``fluo_2d``: ``img2d.tif``, a 512x512 fluorescence image of the 2018 Data Science Bowl
  with its instance mask ``mask2d.tif``;
* ``he_2d``: ``histo.jpg``, a 300x500 H&E tile without labels;
* ``nuclei_3d``: ``img3d.tif``, a 31x61x57 volume of synthetic nuclei with ``mask3d.tif``.

Without it, phantoms of the same sizes are generated from
:func:`~monai_uda.data.synthetic.random_ellipses`: blurred bright blobs with noise
(fluorescence) or purple nuclei on pink (H&E-like). Which origin is used is logged and is in
every :class:`Sample` and in the ``README.txt`` of :func:`make_sample_dataset`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from monai.transforms import ScaleIntensityRangePercentiles
from scipy import ndimage
from skimage.segmentation import relabel_sequential

from monai_uda.data.datalist import export_split, write_datalist
from monai_uda.data.io import read_image, read_label, write_array
from monai_uda.data.synthetic import random_ellipses
from monai_uda.errors import UDAInputError
from monai_uda.files import write_text

__all__ = [
    "SAMPLE_NAMES",
    "Sample",
    "samples_origin",
    "load_sample",
    "dataset_or_sample",
    "make_sample_dataset",
    "render_fluorescence",
    "render_he_like",
    "sample_dataset_dir",
    "sample_test_dir",
    "sample_test_label_dir",
]

logger = logging.getLogger(__name__)

SAMPLE_NAMES = ("fluo_2d", "he_2d", "nuclei_3d")
ORIGINS = ("stardist", "phantom")

# file names in stardist's data folder and the phantom parameters of the same sample:
# (image, label, phantom shape, major semi-axis range, object count range)
_SAMPLES = {
    "fluo_2d": ("img2d.tif", "mask2d.tif", (512, 512), (6, 12), (110, 140)),
    "he_2d": ("histo.jpg", None, (300, 500), (7, 13), (50, 80)),
    "nuclei_3d": ("img3d.tif", "mask3d.tif", (31, 61, 57), (4, 7), (40, 60)),
}
_DESCRIPTIONS = {
    ("fluo_2d", "stardist"): "DSB2018 fluorescence nuclei, 512x512, 125 labelled nuclei (stardist sample data)",
    ("he_2d", "stardist"): "H&E tile, 300x500 RGB, no labels (stardist sample data)",
    ("nuclei_3d", "stardist"): "synthetic 3D nuclei volume 31x61x57 with instance labels (stardist sample data)",
    ("fluo_2d", "phantom"): "generated fluorescence phantom, 512x512, random ellipses with instance labels",
    ("he_2d", "phantom"): "generated H&E-like phantom, 300x500 RGB, purple ellipses on pink, no labels",
    ("nuclei_3d", "phantom"): "generated fluorescence phantom volume 31x61x57, random ellipsoids with instance labels",
}

# H&E-like colours (RGB, 0..255): eosin-pink background and haematoxylin-purple nuclei
_PINK = np.array([236.0, 188.0, 212.0])
_PURPLE = np.array([82.0, 48.0, 138.0])


@dataclass(frozen=True)
class Sample:
    """One sample image.

    Attributes:
        image: ``(C, *spatial)`` float32 in the file's intensity units.
        label: integer instance map of the spatial shape (0 = background), or ``None``.
        origin: ``"stardist"`` (real images of the stardist wheel) or ``"phantom"`` (generated).
        description: one line saying what the image is and where it comes from.
    """

    image: np.ndarray
    label: np.ndarray | None
    origin: str
    description: str


def _stardist_folder() -> Path | None:
    """stardist's ``data/images`` folder when the wheel is installed with all sample files."""
    spec = importlib.util.find_spec("stardist")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "data" / "images"
    needed = [name for entry in _SAMPLES.values() for name in entry[:2] if name]
    return folder if all((folder / name).is_file() for name in needed) else None


def samples_origin() -> str:
    """``"stardist"`` when the real sample images are installed, else ``"phantom"``."""
    return "stardist" if _stardist_folder() is not None else "phantom"


def _unit(image: np.ndarray) -> np.ndarray:
    """Percentile-scale to ``[0, 1]`` (1st..99.8th percentile, clipped) as float32 numpy."""
    return np.asarray(ScaleIntensityRangePercentiles(1, 99.8, 0.0, 1.0, clip=True)(image), dtype=np.float32)


def render_fluorescence(instances: np.ndarray, seed: int = 0, peak: float = 1000.0) -> np.ndarray:
    """Render an instance map as a fluorescence image: bright textured blobs, blur, noise.

    Args:
        instances: 2D or 3D instance map.
        seed: seed of brightness, texture and noise.
        peak: intensity of the brightest nucleus (uint16-like units).

    Returns:
        ``(1, *spatial)`` float32, non-negative.
    """
    rng = np.random.default_rng(seed)
    brightness = np.concatenate([[0.0], rng.uniform(0.45, 1.0, int(instances.max()))])
    grain = ndimage.gaussian_filter(rng.standard_normal(instances.shape), 1.5)
    texture = 1.0 + 0.15 * grain / grain.std()
    image = ndimage.gaussian_filter(brightness[instances] * np.clip(texture, 0.5, 1.5), 1.0)
    image = image + 0.04 + rng.normal(0.0, 0.02, instances.shape)
    return (np.clip(image, 0.0, None) * peak).astype(np.float32)[None]


def render_he_like(fluorescence: np.ndarray, seed: int = 0) -> np.ndarray:
    """Render a 2D fluorescence image in an H&E-like appearance.

    The image is inverted in effect: bright nuclei become haematoxylin-purple, dark background
    becomes eosin-pink, with mild Gaussian noise.

    Args:
        fluorescence: ``(1, H, W)`` or ``(H, W)`` image in any units.
        seed: noise seed.

    Returns:
        ``(3, H, W)`` float32 in ``[0, 255]`` (RGB).
    """
    rng = np.random.default_rng(seed)
    weight = _unit(np.asarray(fluorescence, dtype=np.float32).reshape(-1, *np.shape(fluorescence)[-2:]))[0] ** 0.8
    colours = (1.0 - weight)[None] * _PINK.reshape(3, 1, 1) + weight[None] * _PURPLE.reshape(3, 1, 1)
    colours += rng.normal(0.0, 6.0, colours.shape)
    return np.clip(colours, 0.0, 255.0).astype(np.float32)


def _phantom(name: str, seed: int) -> Sample:
    _, label_file, shape, axes, counts = _SAMPLES[name]
    instances = random_ellipses(shape, axis_range=axes, count_range=counts, seed=seed)
    fluorescence = render_fluorescence(instances, seed=seed)
    if name == "he_2d":
        return Sample(render_he_like(fluorescence, seed), None, "phantom", _DESCRIPTIONS[name, "phantom"])
    return Sample(fluorescence, instances.astype(np.int32), "phantom", _DESCRIPTIONS[name, "phantom"])


def load_sample(name: str, origin: str | None = None) -> Sample:
    """Load a built-in sample image.

    Args:
        name: ``"fluo_2d"``, ``"he_2d"`` or ``"nuclei_3d"``.
        origin: ``None`` picks :func:`samples_origin`; ``"phantom"`` forces generated images;
            ``"stardist"`` requires the real ones.

    Raises:
        UDAInputError: unknown name or origin, or ``"stardist"`` without the ``[samples]`` extra.
    """
    if name not in _SAMPLES:
        raise UDAInputError(f"unknown sample {name!r} (expected one of {', '.join(SAMPLE_NAMES)})")
    if origin not in (None, *ORIGINS):
        raise UDAInputError(f"unknown sample origin {origin!r} (expected one of {', '.join(ORIGINS)})")
    folder = _stardist_folder()
    if origin == "stardist" and folder is None:
        raise UDAInputError("the real sample images need the [samples] extra: pip install 'monai-uda[samples]'")
    if origin == "phantom" or folder is None:
        if origin is None:
            logger.warning("sample %r: stardist sample data not installed, using a generated phantom", name)
        return _phantom(name, seed=0)
    image_file, label_file, shape, *_ = _SAMPLES[name]
    image, _ = read_image(folder / image_file, spatial_dims=len(shape))
    label = None if label_file is None else read_label(folder / label_file, spatial_dims=len(shape)).astype(np.int32)
    logger.info("sample %r: real image %s", name, folder / image_file)
    return Sample(image, label, "stardist", _DESCRIPTIONS[name, "stardist"])


def _instances(label: np.ndarray) -> np.ndarray:
    """Sequential ids ``1..n`` (crops keep only part of the ids) as uint16."""
    return relabel_sequential(np.asarray(label))[0].astype(np.uint16)


def _crop_corners(
    rng: np.random.Generator, region: tuple[int, ...], size: tuple[int, ...], count: int
) -> list[tuple[int, ...]]:
    return [tuple(int(rng.integers(0, r - s + 1)) for r, s in zip(region, size)) for _ in range(count)]


def _write_pair(out: Path, name: str, image: np.ndarray, label: np.ndarray | None) -> dict[str, str]:
    """Write ``image`` (``(C, *spatial)``) and its label; returns the datalist item (absolute paths)."""
    if image.shape[0] == 3:  # RGB PNG, channels last
        image_path = write_array(out / f"{name}.png", np.moveaxis(np.round(image), 0, -1).astype(np.uint8))
    else:
        image_path = write_array(out / f"{name}.tif", np.round(image[0]).astype(np.uint16))
    item = {"image": str(image_path)}
    if label is not None:
        item["label"] = str(write_array(out / f"{name}_label.tif", _instances(label)))
    return item


def _dataset_2d(folder: Path, seed: int, origin: str | None) -> tuple[dict[str, list[dict[str, str]]], list[str]]:
    rng = np.random.default_rng(seed)
    fluo, he = load_sample("fluo_2d", origin), load_sample("he_2d", origin)
    height, width = fluo.image.shape[1:]
    split_col, split_row = width * 3 // 4, height * 3 // 4
    train_region = (split_row, split_col)
    crop = (min(256, split_row), min(256, split_col))
    source = []
    for k, (y, x) in enumerate(_crop_corners(rng, train_region, crop, 4)):
        window = (slice(y, y + crop[0]), slice(x, x + crop[1]))
        source.append(
            _write_pair(folder / "source", f"fluo_crop{k}", fluo.image[(slice(None), *window)], fluo.label[window])
        )
    valid_window = (slice(split_row, height), slice(0, split_col))
    valid_image = fluo.image[(slice(None), *valid_window)]
    validation = [_write_pair(folder / "validation", "fluo_val", valid_image, fluo.label[valid_window])]
    target = [_write_pair(folder / "target", "he_tile", he.image, None)]
    he_crop = tuple(min(256, s) for s in he.image.shape[1:])
    for k, (y, x) in enumerate(_crop_corners(rng, he.image.shape[1:], he_crop, 3)):
        target.append(
            _write_pair(folder / "target", f"he_crop{k}", he.image[:, y : y + he_crop[0], x : x + he_crop[1]], None)
        )
    held_out = fluo.image[:, :, split_col:]
    test = [_write_pair(folder / "test", "he_like_test", render_he_like(held_out, seed), fluo.label[:, split_col:])]
    notes = [
        f"source: 4 random {crop[0]}x{crop[1]} crops (seed {seed}) of the top-left {split_row}x{split_col} "
        f"of {fluo.description}",
        f"validation: the bottom-left {height - split_row}x{split_col} strip of the same image, with labels",
        f"target: {he.description}: the whole tile and 3 random {he_crop[0]}x{he_crop[1]} crops, unlabelled",
        f"test: the held-out right quarter ({height}x{width - split_col}) of the fluorescence image rendered "
        "H&E-like (inverted, purple nuclei on pink, noise) with its true labels; a labelled stand-in for the "
        "target domain, not real H&E",
    ]
    return {"source": source, "target": target, "validation": validation, "test": test}, notes


def _target_look_3d(volume: np.ndarray, seed: int) -> np.ndarray:
    """A different appearance of a volume: gamma 0.6, inverted, noise; ``(1, *spatial)`` in 0..4000."""
    rng = np.random.default_rng(seed)
    look = 1.0 - _unit(volume) ** 0.6 + rng.normal(0.0, 0.05, volume.shape)
    return (np.clip(look, 0.0, None) * 3000.0 + 500.0).astype(np.float32)


def _dataset_3d(folder: Path, seed: int, origin: str | None) -> tuple[dict[str, list[dict[str, str]]], list[str]]:
    vol = load_sample("nuclei_3d", origin)
    image, label = vol.image, vol.label

    def flipped(axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        return np.flip(image, [a + 1 for a in axes]), np.flip(label, axes)

    copies = (("orig", ()), ("flipx", (2,)), ("flipy", (1,)))
    source = [_write_pair(folder / "source", f"nuclei3d_{name}", *flipped(axes)) for name, axes in copies]
    val_image, val_label = flipped((1, 2))
    validation = [_write_pair(folder / "validation", "nuclei3d_flipxy", val_image, val_label)]
    target = [
        _write_pair(folder / "target", f"nuclei3d_target_{name}", _target_look_3d(flipped(axes)[0], seed + k), None)
        for k, (name, axes) in enumerate((("orig", ()), ("flipz", (0,))))
    ]
    test_image, test_label = flipped((0, 2))
    test = [_write_pair(folder / "test", "nuclei3d_target_test", _target_look_3d(test_image, seed + 7), test_label)]
    notes = [
        f"source: {vol.description}, original and flipped along x and y",
        "validation: the same volume flipped along x and y, with labels",
        "target: the same volume in another appearance (gamma 0.6, inverted, noise), unlabelled",
        "test: the volume flipped along z and x in the target appearance, with its labels; it shares its "
        "nuclei with source and target, so scores only show that the pipeline works",
    ]
    return {"source": source, "target": target, "validation": validation, "test": test}, notes


def make_sample_dataset(out_dir: str | Path, spatial_dims: int = 2, seed: int = 0, origin: str | None = None) -> Path:
    """Write a tiny but real dataset folder with ``datalist.json``, small enough to train on a CPU.

    2D: source = 4 random 256x256 fluorescence crops (labels relabelled per crop) from the
    left three quarters of ``fluo_2d``, validation = the bottom strip of that part, target =
    the H&E tile and 3 crops of it (unlabelled), test = the held-out right quarter of the
    fluorescence image *rendered* H&E-like (inverted, purple tint, pink background, noise)
    with its true labels: a labelled target-*like* test set, since the real H&E tile has no
    labels. 3D: source = ``nuclei_3d`` and flipped copies, target = the volume in another
    appearance (gamma, inverted, noise), test = a flipped volume in the target appearance with
    labels. The same volume appears in every split, so 3D scores only check the plumbing.

    Files are rewritten in place (same names), so calling it again refreshes the folder.

    Args:
        out_dir: output folder (created).
        spatial_dims: 2 or 3.
        seed: seed of the crop positions and noise.
        origin: as in :func:`load_sample`.

    Returns:
        Path of the written ``datalist.json``.

    Raises:
        UDAInputError: bad ``spatial_dims`` or an unwritable folder.
    """
    if spatial_dims not in (2, 3):
        raise UDAInputError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    folder = Path(os.path.abspath(out_dir))  # item paths are written relative to it, whatever the cwd
    build = _dataset_2d if spatial_dims == 2 else _dataset_3d
    datalist, notes = build(folder, int(seed), origin)
    used = "stardist" if origin == "stardist" or (origin is None and samples_origin() == "stardist") else "phantom"
    readme = [f"monai-uda {spatial_dims}D sample dataset (origin: {used}, seed {seed})", *notes, ""]
    write_text(folder / "README.txt", "\n".join(readme))
    logger.info("sample dataset (%dD, origin %s) written to %s", spatial_dims, used, folder)
    return write_datalist(folder, datalist)


def dataset_or_sample(dataset_dir: str | Path | None, output_dir: str | Path, spatial_dims: int = 2) -> str | Path:
    """The training's dataset: ``dataset_dir``, or without one the built-in sample written into the run.

    The bundles' ``train.yaml`` default (``--dataset_dir`` unset) trains on the sample, written to
    ``<output_dir>/sample_data`` so that the run folder holds everything it trained on.
    """
    if dataset_dir is not None:
        return dataset_dir
    return make_sample_dataset(Path(output_dir) / "sample_data", spatial_dims)


def sample_dataset_dir(spatial_dims: int = 2) -> Path:
    """The built-in sample dataset in a per-user cache, written on first use.

    The folder is ``$MONAI_UDA_HOME/samples/<n>d`` (default ``~/.cache/monai_uda``); the
    inference and evaluate configs of every bundle default to its ``test`` split.
    """
    home = Path(os.environ.get("MONAI_UDA_HOME", Path.home() / ".cache" / "monai_uda"))
    folder = home / "samples" / f"{spatial_dims}d"
    if not (folder / "datalist.json").is_file():
        make_sample_dataset(folder, spatial_dims=spatial_dims)
    return folder


def sample_test_dir(spatial_dims: int = 2) -> str:
    """Folder of the sample's labelled target test images (the default ``--input_dir``)."""
    return str(_sample_test_split(spatial_dims)[0])


def sample_test_label_dir(spatial_dims: int = 2) -> str:
    """Folder of the sample test images' instance labels (the default ``--gt_dir``)."""
    return str(_sample_test_split(spatial_dims)[1])


def _sample_test_split(spatial_dims: int) -> tuple[Path, Path]:
    folder = sample_dataset_dir(spatial_dims)
    images, labels = folder / "test_split" / "images", folder / "test_split" / "labels"
    if not (images.is_dir() and any(images.iterdir()) and labels.is_dir()):
        images, labels = export_split(folder / "datalist.json", "test", folder / "test_split")
    return images, labels
