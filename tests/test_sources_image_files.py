"""Shared image-source helpers: image reading (pass-through / re-encoding) and COCO segmentations."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fixtures_image import H, W, rect_mask, rect_polygon, uncompressed_rle, write_image
from PIL import Image
from pycocotools import mask as mask_utils

from pixelqa.data import masks
from pixelqa.data.schema import decode_frame
from pixelqa.data.sources._image_files import read_image, segmentation_rle
from pixelqa.data.sources._instructions import choose


def test_read_image_passes_jpeg_and_png_through(tmp_path):
    write_image(tmp_path / "a.jpg")
    px = write_image(tmp_path / "b.png", fmt="PNG")
    a, b = read_image(tmp_path / "a.jpg"), read_image(tmp_path / "b.png")
    assert (a.ext, a.size, a.data) == ("jpg", (H, W), (tmp_path / "a.jpg").read_bytes())
    assert (b.ext, b.size) == ("png", (H, W))
    np.testing.assert_array_equal(decode_frame(b.data), px)  # PNG is lossless: exact pixels


def test_read_image_undoes_exif_rotation_dependence(tmp_path):
    """OpenCV would rotate an EXIF-oriented JPEG; annotations are in stored order, so it is re-encoded."""
    rgb = np.zeros((H, W, 3), dtype=np.uint8)
    rgb[:, : W // 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", exif=exif, quality=95)
    (tmp_path / "r.jpg").write_bytes(buf.getvalue())
    assert decode_frame(buf.getvalue()).shape == (W, H, 3)  # what OpenCV does with the raw file
    img = read_image(tmp_path / "r.jpg")
    assert img.size == (H, W) and decode_frame(img.data).shape == (H, W, 3)
    assert abs(decode_frame(img.data).astype(int) - rgb.astype(int)).mean() < 6


def test_read_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        read_image(tmp_path / "nope.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.jpg"):
        read_image(tmp_path / "bad.jpg")


def test_segmentation_rle_forms():
    poly = rect_polygon(2, 3, 10, 8)
    want = mask_utils.decode(mask_utils.frPyObjects([poly], H, W))[:, :, 0].astype(bool)
    np.testing.assert_array_equal(masks.decode(segmentation_rle([poly], H, W, "p")), want)
    drawn = rect_mask(4, 4, 9, 20)
    one = segmentation_rle(uncompressed_rle(drawn), H, W, "r")
    np.testing.assert_array_equal(masks.decode(one), drawn)
    two = segmentation_rle([uncompressed_rle(drawn), uncompressed_rle(rect_mask(20, 0, 22, 2))], H, W, "l")
    np.testing.assert_array_equal(masks.decode(two), drawn | rect_mask(20, 0, 22, 2))
    with pytest.raises(ValueError, match=r"x\.size"):
        segmentation_rle(uncompressed_rle(np.zeros((5, 5), bool)), H, W, "x")
    with pytest.raises(ValueError, match="polygon"):
        segmentation_rle([[1, 2, 3]], H, W, "odd")
    with pytest.raises(ValueError, match="expected COCO polygons"):
        segmentation_rle("mask", H, W, "s")


def test_choose_is_stable_and_spreads():
    opts = ("a", "b", "c")
    assert choose(opts, "k", 1) == choose(opts, "k", 1)
    assert len({choose(opts, "k", i) for i in range(30)}) == 3
