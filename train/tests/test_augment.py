"""The augmentations against their reference behaviour on fixed synthetic inputs: the per-image pipeline
(`train/augment.py`) against the official policy's documented behaviour (grey fill, bicubic shear, black Cutout,
torchvision's crop scale and jitter order), and the batched device pipeline (`train/gpu_augment.py`) against the
per-image one, op by op and in distribution. CPU, a few seconds."""
import random

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision import transforms as T

from train import augment as A
from train import gpu_augment as G
from train.model import MEAN, STD

MEAN_T, STD_T = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)


def synth(n, seed=0):
    """Smooth colour gradients with noise: every op (autocontrast, equalize, shear...) has something to do."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32]
    out = []
    for _ in range(n):
        base = np.stack([(xx * rng.uniform(2, 8) + yy * rng.uniform(-4, 4) + rng.uniform(0, 255)) % 256 for _ in range(3)], -1)
        img = base * rng.uniform(0.3, 1) + rng.normal(0, 20, (32, 32, 3)) + rng.uniform(0, 80)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)


IMGS = synth(12)
X = torch.from_numpy(IMGS.transpose(0, 3, 1, 2).copy()).float()


def ref_op(op, mag, sign, imgs=IMGS):
    return np.stack([np.asarray(A.apply_op(Image.fromarray(im), op, mag, sign)) for im in imgs]).transpose(0, 3, 1, 2)


def batch_op(op, mag, sign, x=X):
    n = x.shape[0]
    m = torch.full((n,), mag * (sign if op in A.SIGNED else 1))
    return G.apply_ops(x, torch.full((n,), G.OP_ID[op]), m).numpy()


# ---------------------------------------------------------------- reference behaviour of the per-image pipeline

@pytest.mark.parametrize("op,sign", [("translateX", 1), ("translateX", -1), ("translateY", 1), ("shearX", 1),
                                     ("shearY", -1), ("rotate", 1)])
def test_geometric_ops_fill_with_grey_128(op, sign):
    black = np.zeros((1, 32, 32, 3), np.uint8)
    mag = float(A.RANGES[op][9])
    ref = ref_op(op, mag, sign, black)
    values = set(np.unique(ref).tolist())
    assert 128 in values and values <= {0, 128} | set(range(1, 128)), values  # grey where the image does not reach
    assert (ref == 128).mean() > 0.05
    np.testing.assert_array_equal(batch_op(op, mag, sign, torch.zeros(1, 3, 32, 32)), ref)


def test_shear_is_bicubic_not_nearest():
    img = Image.fromarray(IMGS[0])
    bicubic = np.asarray(A.apply_op(img, "shearX", 0.3, 1)).astype(int)
    nearest = np.asarray(img.transform(img.size, Image.AFFINE, (1, 0.3, 0, 0, 1, 0), Image.NEAREST, fillcolor=A.FILL)).astype(int)
    inside = (nearest != 128).all(-1)
    assert np.abs(bicubic - nearest)[inside].mean() > 2  # interpolated, not copied
    # translate and rotate stay nearest: their outputs are pixels of the input (or grey)
    t = np.asarray(A.apply_op(img, "translateX", float(A.RANGES["translateX"][5]), 1))
    assert set(map(tuple, t.reshape(-1, 3))) <= set(map(tuple, IMGS[0].reshape(-1, 3))) | {A.FILL}


def test_cutout_runs_before_normalize_so_the_hole_is_black():
    names = [type(t).__name__ for t in A.classifier_view().transforms]
    assert names.index("Cutout") < names.index("Normalize")
    white = torch.ones(3, 32, 32)
    np.random.seed(0)
    cut = A.Cutout(16)(white)
    assert (cut == 0).all(0).sum() >= 64 and set(torch.unique(cut).tolist()) == {0.0, 1.0}
    hole = T.Normalize(MEAN, STD)(cut)[:, cut[0] == 0]
    torch.testing.assert_close(hole, (-MEAN_T / STD_T).view(3, 1).expand_as(hole))


def test_contrastive_crop_uses_torchvision_default_scale():
    rrc = A.contrastive_view().transforms[0]
    assert isinstance(rrc, T.RandomResizedCrop) and rrc.scale == (0.08, 1.0) and rrc.ratio == pytest.approx((3 / 4, 4 / 3))
    torch.manual_seed(0)
    i, j, h, w = G.random_resized_crop_params(20000, 32, 32, "cpu")
    frac = (h * w).double() / 1024
    torch.manual_seed(1)
    ref = torch.tensor([float(np.prod(T.RandomResizedCrop.get_params(torch.zeros(3, 32, 32), (0.08, 1.0), (3 / 4, 4 / 3))[2:]))
                        for _ in range(2000)]) / 1024
    assert frac.min() < 0.1 and frac.max() == 1.0 and ref.min() < 0.1
    assert abs(frac.mean().item() - ref.mean().item()) < 0.02 and abs(frac.std().item() - ref.std().item()) < 0.02
    assert ((i + h) <= 32).all() and ((j + w) <= 32).all() and (i >= 0).all() and (j >= 0).all()


def test_colour_jitter_order_is_random_per_image():
    jit = A.contrastive_view().transforms[2].transforms[0]
    assert isinstance(jit, T.ColorJitter)
    torch.manual_seed(0)
    orders = {tuple(jit.get_params(jit.brightness, jit.contrast, jit.saturation, jit.hue)[0].tolist()) for _ in range(300)}
    assert len(orders) > 20  # torchvision draws one of the 24 orders per call
    order = torch.argsort(torch.rand(24000, 4), 1)
    counts = np.unique(order.numpy(), axis=0, return_counts=True)[1]
    assert len(counts) == 24 and counts.min() > 850 and counts.max() < 1150
    # the order matters: brightness then hue differs from hue then brightness
    x = X[:4]
    one, n = torch.ones(4), 4
    a = G.color_jitter(x, 1.4 * one, one, one, 0.09 * one, torch.tensor([[0, 3, 1, 2]] * n))
    b = G.color_jitter(x, 1.4 * one, one, one, 0.09 * one, torch.tensor([[3, 0, 1, 2]] * n))
    assert (a != b).float().mean() > 0.01


# ---------------------------------------------------------------- batched ops against the per-image reference

@pytest.mark.parametrize("op", A.OPS)
def test_every_autoaugment_op_matches_pil(op):
    for b in (3, 9):
        for sign in (1, -1):
            mag = float(A.RANGES[op][b])
            d = np.abs(batch_op(op, mag, sign) - ref_op(op, mag, sign))
            if op.startswith("shear"):  # PIL's bicubic rounds a few pixels differently: 1 level on ~0.15%
                assert d.max() <= 1 and (d > 0).mean() < 0.005, (op, b, sign)
            else:
                assert d.max() == 0, (op, b, sign, d.max())


def test_colour_jitter_and_crop_match_torchvision_on_pil():
    imgs, x = IMGS, X
    for fn, g, f in ((TF.adjust_brightness, G.enhance_brightness, 1.31), (TF.adjust_contrast, G.enhance_contrast, 0.62),
                     (TF.adjust_saturation, G.enhance_color, 1.37), (TF.adjust_hue, G.adjust_hue, -0.083),
                     (TF.adjust_hue, G.adjust_hue, 0.061)):
        ref = np.stack([np.asarray(fn(Image.fromarray(im), f)) for im in imgs]).transpose(0, 3, 1, 2)
        np.testing.assert_array_equal(g(x, torch.full((len(imgs),), f)).numpy(), ref)
    # a whole jitter in a fixed order, as torchvision applies it
    n = len(imgs)
    bf, cf, sf, hf = 0.7, 1.25, 0.8, 0.05
    ref = []
    for im in imgs:
        p = Image.fromarray(im)
        for k in (2, 0, 3, 1):
            p = [lambda q: TF.adjust_brightness(q, bf), lambda q: TF.adjust_contrast(q, cf),
                 lambda q: TF.adjust_saturation(q, sf), lambda q: TF.adjust_hue(q, hf)][k](p)
        ref.append(np.asarray(p))
    got = G.color_jitter(x, torch.full((n,), bf), torch.full((n,), cf), torch.full((n,), sf), torch.full((n,), hf),
                         torch.tensor([[2, 0, 3, 1]] * n))
    np.testing.assert_array_equal(got.numpy(), np.stack(ref).transpose(0, 3, 1, 2))
    boxes = [(0, 0, 32, 32), (2, 5, 30, 7), (10, 3, 5, 12), (0, 20, 9, 12)] * 3
    ref = np.stack([np.asarray(TF.resized_crop(Image.fromarray(im), i, j, h, w, [32, 32])) for im, (i, j, h, w) in zip(imgs, boxes)])
    i, j, h, w = (torch.tensor(v) for v in zip(*boxes))
    np.testing.assert_array_equal(G.resized_crop(x, i, j, h, w).numpy(), ref.transpose(0, 3, 1, 2))
    grey = np.stack([np.asarray(TF.to_grayscale(Image.fromarray(im), 3)) for im in imgs]).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(G.grey_l(x).expand_as(x).numpy(), grey)


def _per_image(v):
    """Per image: channel means and stds, the fraction of grey-fill pixels, of black (Cutout) pixels, and whether
    it is greyscale."""
    grey = (torch.tensor([128 / 255.0] * 3).view(3, 1, 1) - MEAN_T) / STD_T
    black = -MEAN_T / STD_T
    frac = lambda ref: (torch.abs(v - ref) < 1e-4).all(1).float().mean((1, 2))[:, None]
    mono = ((v * STD_T + MEAN_T).diff(dim=1).abs() < 1e-5).flatten(1).all(1).float()[:, None]
    return torch.cat([v.mean((2, 3)), v.std((2, 3)), frac(grey), frac(black), mono], 1).double()


def _same_distribution(ref, got, z=4.0):
    """Each per-image statistic has the same mean in both samples, within z standard errors."""
    a, b = _per_image(ref), _per_image(got)
    se = torch.sqrt(a.var(0) / len(a) + b.var(0) / len(b)).clamp(min=1e-3)
    gap = (a.mean(0) - b.mean(0)).abs() / se
    assert (gap < z).all(), (gap, a.mean(0), b.mean(0))
    return b.mean(0)


def test_batch_views_sample_the_reference_distribution():
    """The same 12 images, 50 draws each, through the per-image reference and the batched pipeline."""
    reps = 50
    random.seed(0); np.random.seed(0); torch.manual_seed(0)
    cls, sim = A.classifier_view(), A.contrastive_view()
    ref_c = torch.stack([cls(Image.fromarray(im)) for _ in range(reps) for im in IMGS])
    ref_s = torch.stack([sim(Image.fromarray(im)) for _ in range(reps) for im in IMGS])
    torch.manual_seed(1)
    aug = G.BatchViews("cpu")
    u8 = torch.from_numpy(IMGS.transpose(0, 3, 1, 2).copy()).repeat(reps, 1, 1, 1)
    got_c, got_s = aug.classifier(u8), aug.contrastive(u8)
    assert got_c.shape == ref_c.shape and got_s.shape == ref_s.shape
    c = _same_distribution(ref_c, got_c)
    s = _same_distribution(ref_s, got_s)
    assert c[6] > 0.02 and 0.15 < c[7] < 0.35  # grey fill present; Cutout's black hole (plus black from the ops)
    assert 0.1 < s[8] < 0.3  # greyscale w.p. 0.2


def test_device_loader_is_static_and_drops_the_last_partial_batch():
    y = np.arange(70) % 10
    loader = G.DeviceLoader(np.repeat(IMGS[:1], 70, 0), y, batch=32, views=3, device="cpu")
    assert len(loader) == 2
    seen = []
    for views, labels in loader:
        assert len(views) == 3 and all(v.shape == (32, 3, 32, 32) for v in views) and labels.shape == (32,)
        seen.append(labels)
    assert len(seen) == 2
