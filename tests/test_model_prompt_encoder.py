"""Sparse prompt encoder (Fourier + types + time), masked pooling and the projectors."""

from __future__ import annotations

import math

import pytest
import torch

from pixelqa.model.projectors import LanguageToMask, MaskToLanguage
from pixelqa.model.prompt_encoder import FourierFeatures, SparsePromptEncoder, mask_to_grid, masked_pool


def test_fourier_features_match_hand_computation():
    torch.manual_seed(0)
    ff = FourierFeatures(2, 3)
    xy = torch.tensor([0.25, 0.75])
    g = ff.gaussian
    proj = [2 * math.pi * ((2 * 0.25 - 1) * g[0, j] + (2 * 0.75 - 1) * g[1, j]) for j in range(3)]
    expected = torch.tensor([math.sin(p) for p in proj] + [math.cos(p) for p in proj])
    torch.testing.assert_close(ff(xy), expected, atol=1e-5, rtol=1e-5)


def test_time_changes_tokens_only_when_temporal_on():
    torch.manual_seed(0)
    on = SparsePromptEncoder(32, hidden=16, temporal=True)
    off = SparsePromptEncoder(32, hidden=16, temporal=False)
    off.load_state_dict(on.state_dict())
    kinds, coords = ["point", "box"], [(0.3, 0.4), (0.1, 0.2, 0.5, 0.6)]
    a_on, b_on = on(kinds, coords, [0, 0]), on(kinds, coords, [3, 3])
    a_off, b_off = off(kinds, coords, [0, 0]), off(kinds, coords, [3, 3])
    assert a_on.shape == (2, 32)
    assert not torch.allclose(a_on, b_on)
    torch.testing.assert_close(a_off, b_off)
    # a point and a box with the same top-left corner are different tokens
    p, b = on(["point", "box"], [(0.1, 0.2), (0.1, 0.2, 0.5, 0.6)], [0, 0])
    assert not torch.allclose(p, b)


def test_box_corners_are_not_interchangeable():
    torch.manual_seed(0)
    enc = SparsePromptEncoder(8, hidden=16)
    a = enc(["box"], [(0.1, 0.1, 0.2, 0.2)], [0])
    b = enc(["box"], [(0.2, 0.2, 0.2, 0.2)], [0])
    assert not torch.allclose(a, b)


@pytest.mark.parametrize(
    "kind,coords,match",
    [
        ("point", (1.2, 0.5), "outside the frame"),
        ("point", (-0.1, 0.5), "outside the frame"),
        ("box", (0.5, 0.1, 0.2, 0.9), "x2 < x1"),
        ("box", (0.1, 0.1, 0.2, 1.5), "outside the frame"),
        ("box", (0.1, 0.1), "expected \\(x1, y1, x2, y2\\)"),
        ("circle", (0.1, 0.1), "expected 'point' or 'box'"),
    ],
)
def test_bad_sparse_prompts_raise(kind, coords, match):
    enc = SparsePromptEncoder(8, hidden=16)
    with pytest.raises(ValueError, match=match):
        enc([kind], [coords], [0])


def test_masked_pool_weights_by_area():
    feats = torch.arange(8, dtype=torch.float32).view(4, 2)  # 2 x 2 grid of 2-d features
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0:2, 0:2] = True  # all of cell (0, 0)
    mask[0, 2] = True  # a quarter of cell (0, 1)
    w = mask_to_grid(mask, (2, 2))
    torch.testing.assert_close(w, torch.tensor([[1.0, 0.25], [0.0, 0.0]]))
    expected = (1.0 * feats[0] + 0.25 * feats[1]) / 1.25
    torch.testing.assert_close(masked_pool(feats, mask, (2, 2)), expected)
    with pytest.raises(ValueError, match="empty mask"):
        masked_pool(feats, torch.zeros(4, 4, dtype=torch.bool), (2, 2))


def test_m2l_starts_as_qwen_merger_and_l2m_shapes():
    merger = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.GELU(), torch.nn.Linear(16, 8))
    m2l = MaskToLanguage(16, 8)
    assert m2l.init_from_merger(merger)
    x = torch.randn(3, 16)
    torch.testing.assert_close(m2l(x), merger(x))
    l2m = LanguageToMask(8, num_tokens=4, sam_width=256)
    assert l2m(torch.randn(5, 8)).shape == (5, 4, 256)
