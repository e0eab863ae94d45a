"""Streaming whole-slide detection: the in-memory FolderDetector's instances, one id per nucleus across tile rows."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage
from skimage.draw import disk
from skimage.measure import regionprops

from monai_uda.errors import UDAInputError
from monai_uda.inference.detection import Candidate, FolderDetector, _paint
from monai_uda.inference.wsi_detection import SlideDetector, StreamingPainter

REPO = Path(__file__).resolve().parents[2]
KWARGS = {"channels": 3, "tile_size": 64, "score_threshold": 0.5, "min_size": 5}


class DiscDetector(torch.nn.Module):
    """A torchvision-style 'detector' without weights: one mask per bright connected component of the tile,
    dilated by ``grow`` pixels (so masks of close nuclei overlap and compete), scored by its size and position."""

    def __init__(self, grow: int = 1) -> None:
        super().__init__()
        self.grow = grow

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = []
        for image in images:
            components, n = ndimage.label(image.mean(0).numpy() > 0.5)
            masks = np.zeros((n, 1, *components.shape), dtype=np.float32)
            scores = np.zeros(n, dtype=np.float32)
            for k, box in enumerate(ndimage.find_objects(components)):
                mask = (
                    ndimage.binary_dilation(components == k + 1, iterations=self.grow)
                    if self.grow
                    else components == k + 1
                )
                masks[k, 0] = mask
                scores[k] = 0.6 + mask.sum() / 2000.0 + 0.01 * ((box[0].start * 7 + box[1].start * 3) % 10)
            out.append({"masks": torch.from_numpy(masks), "scores": torch.from_numpy(scores)})
        return out


def _slide(shape: tuple[int, int], discs: list[tuple[int, int, int]], seed: int = 0) -> np.ndarray:
    """Dark noisy background with bright discs ``(y, x, radius)``, RGB ``uint8``."""
    rng = np.random.default_rng(seed)
    image = rng.integers(20, 60, (*shape, 3)).astype(np.uint8)
    for y, x, r in discs:
        image[disk((y, x), r, shape=shape)] = rng.integers(200, 240, 3)
    return image


def _write(folder: Path, image: np.ndarray, tile: int = 32) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / "slide.tif", image, tile=(tile, tile), compression="zlib")
    return folder


def _same_instances(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to the numbering of the ids: same foreground and a one-to-one map between the ids."""
    both = a > 0
    if not np.array_equal(both, b > 0):
        return False
    pairs = np.unique(np.stack([a[both], b[both]]), axis=1)
    return pairs.shape[1] == np.unique(a[both]).size == np.unique(b[both]).size


def _rows(table: str) -> dict[int, dict[str, str]]:
    with open(table, newline="") as handle:
        return {int(r["id"]): r for r in csv.DictReader(handle)}


@pytest.mark.parametrize("overlap, windows", [(24, 8 * 5), (8, 6 * 4)])
def test_streaming_instances_equal_the_in_memory_detector(tmp_path, overlap, windows):
    """A 330 x 190 slide of 64 px tiles (6-8 tile rows) with 70 random, partly touching discs whose dilated masks
    compete for pixels: the same instances as ``FolderDetector``. With overlap 24 (> every disc) no disc is cut, but a
    painter that does not wait for open candidates gets one instance more; with 8 some discs are cut in every tile and
    the merge order (whole first, by score) decides more contested pixels: both paths still agree pixel for pixel."""
    rng = np.random.default_rng(1)
    discs = [
        (int(y), int(x), int(r)) for (y, x), r in zip(rng.integers(5, (325, 185), (70, 2)), rng.integers(3, 8, 70))
    ]
    inputs = _write(tmp_path / "in", _slide((330, 190), discs))
    net = DiscDetector(grow=1)
    record = SlideDetector(net, str(inputs), str(tmp_path / "wsi"), tissue=False, tile_overlap=overlap, **KWARGS).run()[
        0
    ]
    FolderDetector(net, str(inputs), str(tmp_path / "mem"), overlay=False, tile_overlap=overlap, **KWARGS).run()
    streamed = tifffile.imread(record["instances"])
    in_memory = tifffile.imread(tmp_path / "mem" / "slide_instances.tif")
    assert streamed.shape == in_memory.shape == (330, 190) and streamed.dtype == np.uint32
    assert record["n_instances"] == in_memory.max() == len(np.unique(streamed)) - 1 > 40
    assert _same_instances(streamed, in_memory)
    np.testing.assert_array_equal(tifffile.imread(record["mask"]), (streamed > 0).astype(np.uint8) * 255)
    assert record["windows"] == windows and record["windows_skipped"] == 0


def test_nuclei_crossing_tile_rows_keep_one_id_and_the_table_is_regionprops(tmp_path):
    # 64 px tiles, overlap 24: tile rows start at 0, 40, 80, ..., 236 (the last ends at the slide's bottom, 300)
    discs = [
        (40, 30, 6), (63, 100, 7), (80, 60, 5), (118, 150, 7), (120, 20, 6), (200, 100, 7), (236, 40, 6), (294, 150, 5),
    ]
    inputs = _write(tmp_path / "in", _slide((300, 180), discs))
    seg = SlideDetector(
        DiscDetector(grow=0), str(inputs), str(tmp_path / "out"), tissue=False, tile_overlap=24, tile=64, **KWARGS
    )
    record = seg.run()[0]
    instances = tifffile.imread(record["instances"])
    ids = [int(instances[y, x]) for y, x, _ in discs]
    # unique, consecutive
    assert sorted(ids) == list(range(1, len(discs) + 1)) == list(range(1, record["n_instances"] + 1))
    for (y, x, r), nucleus in zip(discs, ids):
        expected = np.zeros(instances.shape, dtype=bool)
        expected[disk((y, x), r, shape=instances.shape)] = True
        np.testing.assert_array_equal(instances == nucleus, expected)  # the whole disc, one id
    rows = _rows(record["table"])
    regions = regionprops(instances.astype(np.int64))
    assert sorted(rows) == [r.label for r in regions] == sorted(ids)
    for region in regions:
        row = rows[region.label]
        assert (float(row["centroid_y"]), float(row["centroid_x"])) == tuple(round(c, 2) for c in region.centroid)
        assert int(row["area"]) == region.area
        assert tuple(int(row[k]) for k in ("bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1")) == region.bbox
    crossing = rows[int(instances[63, 100])]  # the disc across the first tile row's bottom
    assert (crossing["centroid_y"], crossing["centroid_x"], crossing["bbox_y0"], crossing["bbox_y1"]) == (
        "63.0", "100.0", "57", "70",
    )


def test_painter_waits_for_earlier_overlapping_candidates():
    """``a`` (closed after the first tile row) overlaps ``c`` (still open), which comes before it: ``a`` waits, and
    ``b`` of the next tile row, before both, takes its pixels first; the result is ``detect_tiled``'s painting."""

    def box(y0: int, x0: int, h: int, w: int, score: float) -> Candidate:
        return Candidate(score, True, y0, x0, np.ones((h, w), dtype=bool))

    a, c, b = box(30, 0, 8, 10, 0.6), box(35, 5, 10, 10, 0.7), box(42, 8, 10, 10, 0.9)
    painter = StreamingPainter((60, 20), min_size=1, duplicate_overlap=0.9)
    slabs, records = painter.push([a, c], frontier=40)
    # rows above a are final
    assert records.size == 0 and [(start, rows.shape) for start, rows in slabs] == [(0, (30, 20))]
    assert all(not rows.any() for _, rows in slabs)
    more, records = painter.push([b], frontier=60)
    # b whole, then c, then a without contested pixels
    assert [r["area"] for r in records] == [100, 100 - 3 * 7, 80 - 3 * 5]
    streamed = np.concatenate([rows for _, rows in slabs + more])
    assert streamed.shape == (60, 20)
    np.testing.assert_array_equal(streamed, _paint([a, c, b], (60, 20), 1, 0.9))


def test_blank_glass_tiles_are_skipped(tmp_path):
    image = _slide((256, 128), [(30, 40, 6), (100, 90, 7)])
    image[..., 0] = np.maximum(image[..., 0], 150)  # stained (saturated) tissue ...
    image[120:] = 40  # ... above grey glass (dark, so that the disc detector sees nothing there)
    inputs = _write(tmp_path / "in", image)
    record = SlideDetector(
        DiscDetector(), str(inputs), str(tmp_path / "out"), tile_overlap=24, thumbnail_size=64, **KWARGS
    ).run()[0]
    assert record["n_instances"] == 2 and record["windows"] == 6 * 3
    # tile rows start at 0, 40, 80, 120, 160, 192: those at 160 and 192 see glass only (120 reaches the dilated tissue)
    assert record["windows_skipped"] == 2 * 3
    assert tifffile.imread(record["mask"])[120:].max() == 0


def test_slide_smaller_than_the_tile_is_refused(tmp_path):
    inputs = _write(tmp_path / "in", _slide((48, 200), []), tile=16)
    with pytest.raises(UDAInputError, match=r"smaller than the tile \(64, 64\)"):
        SlideDetector(DiscDetector(), str(inputs), str(tmp_path / "out"), **KWARGS).run()


@pytest.mark.parametrize("bundle", ["cyc_pdam", "darcnn"])
def test_bundle_inference_wsi_override(tmp_path, bundle, small_pdam):
    """``inference.yaml`` + ``inference_wsi.yaml`` of a detector bundle through ``monai.bundle``: a randomly initialised
    ResNet-50 Mask R-CNN of the bundle (64 px tiles, few proposals) on a 160 x 128 tiled TIFF gives the instances of
    ``inference.yaml`` on the same image, as tiled TIFFs and a nuclei table."""
    from monai.bundle import ConfigParser, run

    from monai_uda.networks.domain_separation import DomainSeparationMaskRCNN
    from monai_uda.networks.pdam import PDAMDetector

    configs = REPO / "bundles" / bundle / "configs"
    # the shared small settings
    rpn = {k: v for k, v in small_pdam.items() if k.startswith("rpn_") and k.endswith("_test")}
    tiny = {
        "backbone": "resnet50", "patch": [64, 64], "tile_overlap": 16, "score_threshold": 0.0, "detections_per_tile": 5,
    }
    tiny["detector_kwargs"] = rpn
    discs = [(30, 40, 8), (60, 100, 9), (100, 30, 7), (130, 90, 8)]
    image = _slide((160, 128), discs)
    image[..., 0] = np.maximum(image[..., 0], 150)
    inputs = _write(tmp_path / "in", image, tile=32)
    parser = ConfigParser()
    parser.read_config([str(configs / "inference.yaml"), str(configs / "inference_wsi.yaml")])
    parser.update({**tiny, "ckpt_path": str(tmp_path / "model.pt")})  # not written yet: no shipped records
    torch.manual_seed(0)
    training_network = PDAMDetector if bundle == "cyc_pdam" else DomainSeparationMaskRCNN  # its "detector" entry
    network = training_network(parser.get_parsed_content("mask_rcnn"))
    torch.save({"detector": network.state_dict()}, tmp_path / "model.pt")

    common = {"input_dir": str(inputs), "ckpt_path": str(tmp_path / "model.pt"), **tiny}
    run("inference", config_file=[str(configs / "inference.yaml"), str(configs / "inference_wsi.yaml")],
        output_dir=str(tmp_path / "wsi"), tissue="false", **common)
    run("inference", config_file=str(configs / "inference.yaml"), output_dir=str(tmp_path / "mem"), **common)
    streamed = tifffile.imread(tmp_path / "wsi" / "slide_instances.tif")
    in_memory = tifffile.imread(tmp_path / "mem" / "slide_instances.tif")
    assert streamed.shape == (160, 128) and streamed.dtype == np.uint32 and streamed.max() > 0
    assert _same_instances(streamed, in_memory)
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "wsi" / "slide_mask.tif"), (streamed > 0).astype(np.uint8) * 255
    )
    assert sorted(_rows(str(tmp_path / "wsi" / "slide_nuclei.csv"))) == list(range(1, int(streamed.max()) + 1))
