"""Streaming whole-slide inference: same mask as in-memory inference, one id per nucleus across tiles."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from monai.networks.nets import UNet
from PIL import Image
from skimage.draw import disk

from monai_uda.errors import UDAInputError
from monai_uda.inference.readers import SlideReader
from monai_uda.inference.scaling import percentile_from_histogram
from monai_uda.inference.segment import FolderSegmenter
from monai_uda.inference.tissue import scan_slide, tissue_mask
from monai_uda.inference.wsi import SlideSegmenter

REPO = Path(__file__).resolve().parents[2]
GLASS, TISSUE, NUCLEUS = (236, 230, 234), (222, 150, 196), (80, 40, 130)


def _darkness_net() -> torch.nn.Module:
    """Pixel-wise 'segmenter': logit = 4 - 10 * mean(RGB) (dark nuclei are foreground)."""
    net = torch.nn.Conv2d(3, 1, 1)
    with torch.no_grad():
        net.weight.fill_(-10.0 / 3.0)
        net.bias.fill_(4.0)
    return net


def _context_net() -> torch.nn.Module:
    """A small random network with a 9x9 receptive field, so window blending matters (reflect padding: no edge
    artefacts)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 5, padding=2, padding_mode="reflect"), torch.nn.Tanh(),
        torch.nn.Conv2d(4, 1, 5, padding=2, padding_mode="reflect"),
    ).eval()


def _slide(
    shape: tuple[int, int], centres: list[tuple[int, int]], radius: int, tissue_rows: int | None = None
) -> np.ndarray:
    image = np.empty((*shape, 3), dtype=np.uint8)
    image[:] = GLASS
    image[: shape[0] if tissue_rows is None else tissue_rows] = TISSUE
    for centre in centres:
        image[disk(centre, radius, shape=shape)] = NUCLEUS
    return image


def test_streaming_mask_equals_in_memory_sliding_window(tmp_path):
    """A 4096 x 512 tiled TIFF (4k rows along the streaming axis): the streaming path and FolderSegmenter give
    the same mask and nuclei count."""
    rng = np.random.default_rng(0)
    centres = [tuple(c) for c in rng.integers(8, (4088, 504), size=(200, 2))]
    image = _slide((4096, 512), centres, radius=6)
    image = np.clip(image.astype(np.int16) + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8)
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "slide.tif", image, tile=(256, 256), compression="zlib")
    kwargs = dict(channels=3, roi_size=(256, 256), sw_batch_size=4, overlap=0.25, min_size=10)
    net = _context_net()
    record = SlideSegmenter(net, str(tmp_path / "in"), str(tmp_path / "wsi"), tissue=False, **kwargs).run()[0]
    # worker thread
    SlideSegmenter(net, str(tmp_path / "in"), str(tmp_path / "turns"), tissue=False, prefetch_slabs=2, **kwargs).run()
    FolderSegmenter(net, str(tmp_path / "in"), str(tmp_path / "mem"), overlay=False, **kwargs).run()
    streamed = tifffile.imread(tmp_path / "wsi" / "slide_mask.tif")
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "turns" / "slide_instances.tif"), tifffile.imread(record["instances"])
    )
    in_memory = np.asarray(Image.open(tmp_path / "mem" / "slide_mask.png"))
    assert streamed.shape == in_memory.shape == (4096, 512)
    assert 0.005 < (in_memory > 0).mean() < 0.9  # a non-trivial mask
    np.testing.assert_array_equal(streamed, in_memory)
    assert record["n_instances"] == int(tifffile.imread(tmp_path / "mem" / "slide_instances.tif").max())
    assert record["windows"] == 21 * 3 and record["windows_skipped"] == 0


def test_nuclei_crossing_tile_and_slab_borders_keep_one_id(tmp_path):
    # discs centred on the output tile border (row/col 256) and across blender slabs (stride 48)
    centres = [(256, 100), (256, 256), (130, 256), (400, 300), (50, 50)]
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "s.tif", _slide((512, 512), centres, radius=12), tile=(128, 128))
    seg = SlideSegmenter(_darkness_net(), str(tmp_path / "in"), str(tmp_path / "out"), channels=3, roi_size=(64, 64),
                         sw_batch_size=3, overlap=0.25, min_size=10, tile=256, tissue=False)
    record = seg.run()[0]
    instances = tifffile.imread(record["instances"])
    assert record["n_instances"] == len(centres) == instances.max()
    ids = [int(instances[c]) for c in centres]
    assert sorted(ids) == list(range(1, len(centres) + 1))  # unique, consecutive
    for centre, nucleus in zip(centres, ids):
        expected = np.zeros(instances.shape, dtype=bool)
        expected[disk(centre, 12, shape=instances.shape)] = True
        np.testing.assert_array_equal(instances == nucleus, expected)  # whole disc, one id
    with open(record["table"], newline="") as handle:
        rows = {int(r["id"]): r for r in csv.DictReader(handle)}
    assert set(rows) == set(ids)
    row = rows[ids[1]]  # the disc on the tile corner
    assert (float(row["centroid_y"]), float(row["centroid_x"])) == (256.0, 256.0)
    assert int(row["area"]) == int(np.sum(instances == ids[1]))
    # skimage disk: distance < 12
    assert (int(row["bbox_y0"]), int(row["bbox_x0"]), int(row["bbox_y1"]), int(row["bbox_x1"])) == (245, 245, 268, 268)
    mask = tifffile.imread(record["mask"])
    np.testing.assert_array_equal(mask, (instances > 0).astype(np.uint8) * 255)


def test_blank_glass_is_skipped_and_reported(tmp_path):
    centres = [(40, 40), (100, 200), (150, 60)]
    (tmp_path / "in").mkdir()
    tifffile.imwrite(
        tmp_path / "in" / "s.tif", _slide((768, 256), centres, radius=10, tissue_rows=256), tile=(128, 128)
    )
    seg = SlideSegmenter(_darkness_net(), str(tmp_path / "in"), str(tmp_path / "out"), channels=3, roi_size=(64, 64),
                         overlap=0.25, thumbnail_size=128)
    record = seg.run()[0]
    assert record["n_instances"] == 3
    # the bottom two thirds are glass: every window starting below the tissue (+ dilation margin) is skipped
    assert 0.5 < record["fraction_skipped"] < 0.67
    assert tifffile.imread(record["mask"])[300:].max() == 0


def test_reader_regions_histogram_and_tissue(tmp_path):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (300, 520, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "t.tif", image, tile=(128, 128), compression="zlib")
    Image.fromarray(image).save(tmp_path / "p.png")
    for name in ("t.tif", "p.png"):
        with SlideReader(tmp_path / name) as reader:
            assert reader.shape == (300, 520) and reader.channels == 3
            np.testing.assert_array_equal(reader.read(100, 250, 200, 270), image[100:300, 250:520])
    with SlideReader(tmp_path / "t.tif") as reader:
        hist, thumb = scan_slide(reader, factor=4, chunk=128)
        threaded = scan_slide(reader, factor=4, chunk=128, workers=3)  # regions summarised in threads: the same figures
    np.testing.assert_array_equal(threaded[0], hist)
    np.testing.assert_array_equal(threaded[1], thumb)
    assert thumb.shape == (75, 130, 3)
    np.testing.assert_allclose(thumb[2, 3], image[8:12, 12:16].reshape(-1, 3).mean(0), rtol=1e-5)
    for q in (1.0, 50.0, 99.8):
        assert percentile_from_histogram(hist, q) == pytest.approx(np.percentile(image, q))
    glass = np.full((20, 20, 3), 230.0)
    glass[5:10, 5:10] = TISSUE
    found = tissue_mask(glass, dilation=0)
    assert found[5:10, 5:10].all() and found.sum() == 25
    assert tissue_mask(glass[..., :1]) is None and not tissue_mask(np.full((8, 8, 3), 200.0)).any()


def test_scan_whose_last_band_is_thinner_than_the_thumbnail_factor(tmp_path):
    """1025 rows, factor 2, bands of 32 rows: the last band has 1 row, no thumbnail row; every pixel is counted."""
    image = np.random.default_rng(2).integers(0, 256, (1025, 601, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "t.tif", image, tile=(256, 256))
    with SlideReader(tmp_path / "t.tif") as reader:
        for workers in (1, 2):
            hist, thumb = scan_slide(reader, factor=2, chunk=512, workers=workers)
            assert hist.sum() == image.size and thumb.shape == (512, 300, 3)
            np.testing.assert_array_equal(hist, np.bincount(image.ravel(), minlength=256))
            np.testing.assert_allclose(thumb[511, 299], image[1022:1024, 598:600].reshape(-1, 3).mean(0), rtol=1e-5)


def test_slide_smaller_than_window_is_refused(tmp_path):
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "s.tif", np.zeros((64, 64, 3), np.uint8), tile=(64, 64))
    seg = SlideSegmenter(_darkness_net(), str(tmp_path / "in"), str(tmp_path / "out"), channels=3, roi_size=(128, 128))
    with pytest.raises(UDAInputError, match="smaller than the window"):
        seg.run()


@pytest.mark.parametrize("bundle", ["cellseg_uda", "ad_gan"])
def test_bundle_inference_wsi_override(tmp_path, bundle):
    """``inference.yaml`` + ``inference_wsi.yaml`` of a bundle runs the streaming path through ``monai.bundle``."""
    from monai.bundle import run

    from monai_uda.networks.adain import AdaINGenerator

    configs = REPO / "bundles" / bundle / "configs"
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "s.tif", _slide((256, 192), [(60, 60), (128, 150)], radius=10), tile=(64, 64))
    if bundle == "cellseg_uda":
        tiny = {"widths": [4, 8], "target_patch": [64, 64]}
        net = UNet(2, 3, 1, tiny["widths"], [2], num_res_units=1)
        torch.save({"segmenter": net.state_dict()}, tmp_path / "model.pt")
    else:
        tiny = {"gen_widths": [4, 8, 8], "num_res_blocks": 1, "mlp_channels": 8, "patch": [64, 64]}
        net = AdaINGenerator(2, 1, channels=[4, 8, 8], num_res_blocks=1, mlp_channels=8)
        torch.save({"generator": net.state_dict()}, tmp_path / "model.pt")
    run("inference", config_file=[str(configs / "inference.yaml"), str(configs / "inference_wsi.yaml")],
        input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out"), ckpt_path=str(tmp_path / "model.pt"),
        postprocess_workers=3, **tiny)
    assert tifffile.imread(tmp_path / "out" / "s_instances.tif").shape == (256, 192)
    assert tifffile.imread(tmp_path / "out" / "s_mask.tif").dtype == np.uint8
    assert (tmp_path / "out" / "s_nuclei.csv").read_text().startswith("id,centroid_y,centroid_x,area,")


def test_component_wider_than_group_width_is_cut_and_table_matches_instances(tmp_path):
    """A dark bar wider than ``max_width`` (no nucleus is; capped here by ``group_width=128``) is post-processed
    in 128-column pieces (bounded crops); discs stay whole, and every CSV row is ``regionprops`` of the written
    instances."""
    from skimage.measure import regionprops

    centres = [(60, 60), (200, 300), (420, 100), (430, 450)]
    image = _slide((512, 512), centres, radius=12)
    image[300:330, 40:470] = NUCLEUS  # 430 px wide
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "s.tif", image, tile=(128, 128))
    seg = SlideSegmenter(_darkness_net(), str(tmp_path / "in"), str(tmp_path / "out"), channels=3, roi_size=(64, 64),
                         sw_batch_size=3, overlap=0.25, min_size=10, tile=256, tissue=False, group_width=128)
    record = seg.run()[0]
    instances = tifffile.imread(record["instances"])
    bar = np.zeros(instances.shape, dtype=bool)
    bar[300:330, 40:470] = True
    np.testing.assert_array_equal(instances[bar] > 0, True)  # the whole bar is labelled ...
    pieces = [
        instances[bar & (np.arange(512) >= x0) & (np.arange(512) < min(x0 + 128, 470))] for x0 in range(40, 470, 128)
    ]
    for i, piece in enumerate(pieces):  # ... in 4 pieces of <= 128 columns, no id shared across a cut
        for other in pieces[i + 1 :]:
            assert not set(np.unique(piece)) & set(np.unique(other))
    for centre in centres:
        expected = np.zeros(instances.shape, dtype=bool)
        expected[disk(centre, 12, shape=instances.shape)] = True
        np.testing.assert_array_equal(instances == instances[centre], expected)
    with open(record["table"], newline="") as handle:
        rows = {int(r["id"]): r for r in csv.DictReader(handle)}
    regions = regionprops(instances.astype(np.int64))
    assert sorted(rows) == [r.label for r in regions] == list(range(1, record["n_instances"] + 1))
    for region in regions:
        row = rows[region.label]
        assert (float(row["centroid_y"]), float(row["centroid_x"])) == tuple(round(c, 2) for c in region.centroid)
        assert int(row["area"]) == region.area
        assert tuple(int(row[k]) for k in ("bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1")) == region.bbox


class _FailingNet(torch.nn.Module):
    """The darkness network, failing at its ``fail_at``-th call (a device error mid-slide)."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.net, self.calls, self.fail_at = _darkness_net(), 0, fail_at

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("out of memory on window batch")
        return self.net(x)


def test_network_error_mid_slide_is_raised_and_leaves_no_partial_output(tmp_path):
    (tmp_path / "in").mkdir()
    tifffile.imwrite(
        tmp_path / "in" / "slide.tif", _slide((1024, 512), [(100, 100), (700, 300)], radius=8), tile=(256, 256)
    )
    net = _FailingNet(fail_at=3)
    segmenter = SlideSegmenter(
        net, str(tmp_path / "in"), str(tmp_path / "out"), tissue=False, channels=3, roi_size=(256, 256), sw_batch_size=2
    )
    with pytest.raises(RuntimeError, match="out of memory"):
        segmenter.segment_file(tmp_path / "in" / "slide.tif")
    assert net.calls == 3  # stopped at the failing batch, not run to the end
    assert not list((tmp_path / "out").glob("*.tif"))  # no truncated instance map passed off as a result
