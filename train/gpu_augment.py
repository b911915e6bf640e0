"""ProCo's three views for a whole batch at once, on the training device, with per-sample randomness.

The decoded training set lives on the device as one uint8 tensor [N, 3, 32, 32] (`DeviceLoader`); every step
gathers a batch and augments it here. Each operation reproduces the PIL operation the per-image reference
(`augment.py`, the official pipeline) applies, on integer-valued float32 pixels with PIL's own rounding, so the
two sample the same distribution (see `train/tests/test_augment.py`). Per-sample choices (sub-policy, op
probabilities, signs, crop boxes, jitter order) are tensors: every op is computed for the whole batch and
selected per sample with `torch.where`. Shapes are static and nothing reads a value back to the host.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .augment import CIFAR10_POLICY, OPS, RANGES, SIGNED
from .model import MEAN, STD

OP_ID = {op: i for i, op in enumerate(OPS)}


def _policy_tables():
    """Per sub-policy: op id, probability and magnitude of each of the two stages; `signed` per op id."""
    t = {k: [] for k in ("op1", "p1", "m1", "op2", "p2", "m2")}
    for p1, o1, b1, p2, o2, b2 in CIFAR10_POLICY:
        t["op1"].append(OP_ID[o1]); t["p1"].append(p1); t["m1"].append(float(RANGES[o1][b1]))
        t["op2"].append(OP_ID[o2]); t["p2"].append(p2); t["m2"].append(float(RANGES[o2][b2]))
    signed = [op in SIGNED for op in OPS]
    return t, signed


# ----------------------------------------------------------------------------------------------- pixel ops
# x: float32 [B, 3, H, W] holding integers 0..255; per-sample parameters are [B] tensors.

def _b(v):
    return v.view(-1, 1, 1, 1)


def grey_l(x):
    """PIL's RGB -> L: (19595 R + 38470 G + 7471 B + 0x8000) >> 16 (exact in float32)."""
    return torch.floor((19595 * x[:, 0:1] + 38470 * x[:, 1:2] + 7471 * x[:, 2:3] + 32768) / 65536)


def blend(degenerate, x, factor):
    """PIL's Image.blend(degenerate, x, factor) for 8-bit images: truncation, clipped when extrapolating."""
    return (degenerate + _b(factor) * (x - degenerate)).clamp(0, 255).floor()


def enhance_color(x, factor):
    return blend(grey_l(x).expand_as(x), x, factor)


def enhance_contrast(x, factor):
    mean = torch.floor(grey_l(x).mean((1, 2, 3), keepdim=True, dtype=torch.float64) + 0.5).float()
    return blend(mean.expand_as(x), x, factor)


def enhance_brightness(x, factor):
    return blend(torch.zeros_like(x), x, factor)


_SMOOTH = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0


def smooth(x):
    """PIL's ImageFilter.SMOOTH: 3x3 kernel on the interior, rounded; the one-pixel border is copied."""
    b, c, h, w = x.shape
    k = _SMOOTH.to(x.device, x.dtype).view(1, 1, 3, 3).expand(c, 1, 3, 3)
    inner = torch.floor(F.conv2d(x, k, groups=c) + 0.5).clamp(0, 255)
    out = x.clone()
    out[:, :, 1:h - 1, 1:w - 1] = inner
    return out


def enhance_sharpness(x, factor):
    return blend(smooth(x), x, factor)


def posterize(x, bits):
    q = torch.pow(2.0, 8 - _b(bits))
    return torch.floor(x / q) * q


def solarize(x, threshold):
    return torch.where(x >= _b(threshold), 255 - x, x)


def invert(x):
    return 255 - x


def autocontrast(x):
    """ImageOps.autocontrast (cutoff 0) per channel: stretch [min, max] to [0, 255], Python float64 + int()."""
    lo = x.amin((2, 3), keepdim=True).double()
    hi = x.amax((2, 3), keepdim=True).double()
    scale = torch.full_like(hi, 255.0) / (hi - lo).clamp(min=1)  # not 255 / t: torch computes that as 255 * (1 / t)
    y = torch.trunc(x.double() * scale - lo * scale).clamp(0, 255).float()
    return torch.where(hi > lo, y, x)


def equalize(x):
    """ImageOps.equalize per channel, from the channel's 256-bin histogram."""
    b, c, h, w = x.shape
    idx = x.long().view(b, c, h * w)
    hist = torch.zeros(b, c, 256, device=x.device, dtype=torch.long).scatter_add_(2, idx, torch.ones_like(idx))
    top = x.amax((2, 3)).long()  # the last non-empty bin
    last = hist.gather(2, top[..., None])[..., 0]
    step = (h * w - last) // 255
    nonzero = (hist > 0).sum(2)
    before = torch.cumsum(hist, 2) - hist  # pixels in lower bins
    lut = torch.div(step[..., None] // 2 + before, step.clamp(min=1)[..., None], rounding_mode="floor").clamp(max=255)
    y = lut.gather(2, idx).view(b, c, h, w).float()
    keep = ((nonzero <= 1) | (step == 0))[..., None, None]
    return torch.where(keep, x, y)


def _coords(h, w, device):
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float64) + 0.5,
                            torch.arange(w, device=device, dtype=torch.float64) + 0.5, indexing="ij")
    return xs, ys


def _source(mat, h, w):
    """PIL's affine transform: output pixel centre (X + 0.5, Y + 0.5) -> input point (a X + b Y + c, d X + e Y + f)."""
    xs, ys = _coords(h, w, mat.device)
    m = mat.double().view(-1, 6, 1, 1)
    return m[:, 0] * xs + m[:, 1] * ys + m[:, 2], m[:, 3] * xs + m[:, 4] * ys + m[:, 5]


def _gather(x, yi, xi):
    """x [B,C,H,W], integer maps yi, xi [B,H,W] (in range) -> [B,C,H,W]."""
    b, c, h, w = x.shape
    flat = (yi * w + xi).view(b, 1, h * w).expand(b, c, h * w)
    return x.reshape(b, c, h * w).gather(2, flat).view(b, c, h, w)


def affine_nearest(x, mat, fill=128.0):
    b, c, h, w = x.shape
    xin, yin = _source(mat, h, w)
    xi, yi = torch.floor(xin).long(), torch.floor(yin).long()
    ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    out = _gather(x, yi.clamp(0, h - 1), xi.clamp(0, w - 1))
    return torch.where(ok[:, None], out, torch.full_like(out, fill))


def _cubic(v1, v2, v3, v4, d):
    """PIL's Geometry.c bicubic (a = -1): p1 + d (p2 + d (p3 + d p4))."""
    p2 = v3 - v1
    p3 = 2 * (v1 - v2) + v3 - v4
    p4 = v2 - v1 + v4 - v3
    return v2 + d * (p2 + d * (p3 + d * p4))


def affine_bicubic(x, mat, fill=128.0):
    b, c, h, w = x.shape
    xin, yin = _source(mat, h, w)
    ok = (xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)
    xs, ys = xin - 0.5, yin - 0.5
    x0, y0 = torch.floor(xs), torch.floor(ys)
    dx, dy = (xs - x0)[:, None], (ys - y0)[:, None]
    x0, y0 = x0.long(), y0.long()
    xd = x.double()
    rows = []
    for j in (-1, 0, 1, 2):
        yi = (y0 + j).clamp(0, h - 1)
        taps = [_gather(xd, yi, (x0 + i).clamp(0, w - 1)) for i in (-1, 0, 1, 2)]
        rows.append(_cubic(*taps, dx))
    v = _cubic(*rows, dy)
    out = v.clamp(0, 255).floor().float()
    return torch.where(ok[:, None], out, torch.full_like(out, fill))


def rotation_matrix(angle_deg, h, w):
    """PIL's Image.rotate (about the centre, counter-clockwise for positive angles) as an affine map."""
    a = -angle_deg.double() * math.pi / 180
    cos, sin = torch.cos(a), torch.sin(a)
    cx, cy = w / 2.0, h / 2.0
    c = cos * -cx + sin * -cy + cx
    f = -sin * -cx + cos * -cy + cy
    return torch.stack([cos, sin, c, -sin, cos, f], 1)


def op_matrix(kind, m, h, w):
    """Affine matrices of the geometric AutoAugment ops (signed magnitude m [B])."""
    one, zero = torch.ones_like(m, dtype=torch.float64), torch.zeros_like(m, dtype=torch.float64)
    m = m.double()
    if kind == "shearX":
        return torch.stack([one, m, zero, zero, one, zero], 1)
    if kind == "shearY":
        return torch.stack([one, zero, zero, m, one, zero], 1)
    if kind == "translateX":
        return torch.stack([one, zero, m * w, zero, one, zero], 1)
    if kind == "translateY":
        return torch.stack([one, zero, zero, zero, one, m * h], 1)
    if kind == "rotate":
        return rotation_matrix(m, h, w)
    raise ValueError(kind)


def apply_ops(x, op, m, ops=OPS):
    """Per sample b: op `OPS[op[b]]` with signed magnitude m[b]; samples with op = -1 are left as they are.
    Each op of `ops` is computed for the batch once (geometric ops share one sampler per interpolation)."""
    b, _, h, w = x.shape
    out = x
    eye = torch.tensor([1.0, 0, 0, 0, 1.0, 0], dtype=torch.float64, device=x.device).expand(b, 6)

    def where(sel, y):
        return torch.where(_b(sel), y, out)

    for interp, kinds in ((affine_nearest, ("translateX", "translateY", "rotate")), (affine_bicubic, ("shearX", "shearY"))):
        kinds = [k for k in kinds if k in ops]
        if not kinds:
            continue
        mat, sel = eye, torch.zeros(b, dtype=torch.bool, device=x.device)
        for k in kinds:
            s = op == OP_ID[k]
            mat = torch.where(s[:, None], op_matrix(k, m, h, w), mat)
            sel = sel | s
        out = where(sel, interp(x, mat))
    enh = {"color": enhance_color, "contrast": enhance_contrast, "brightness": enhance_brightness,
           "sharpness": enhance_sharpness}
    for k, fn in enh.items():
        if k in ops:
            out = where(op == OP_ID[k], fn(x, 1 + m))
    if "posterize" in ops:
        out = where(op == OP_ID["posterize"], posterize(x, m))
    if "solarize" in ops:
        out = where(op == OP_ID["solarize"], solarize(x, m))
    if "invert" in ops:
        out = where(op == OP_ID["invert"], invert(x))
    if "autocontrast" in ops:
        out = where(op == OP_ID["autocontrast"], autocontrast(x))
    if "equalize" in ops:
        out = where(op == OP_ID["equalize"], equalize(x))
    return out


# ------------------------------------------------------------------------------------------ colour jitter

def rgb_to_hsv_pil(x):
    """PIL's RGB -> HSV (Convert.c, colorsys-style), as uint8-valued float channels; single precision where
    PIL's C code uses float, double where it uses double."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    maxc, minc = x.amax(1), x.amin(1)
    cr = (maxc - minc).clamp(min=1)
    s = (maxc - minc) / maxc.clamp(min=1)
    rc, gc, bc = (maxc - r) / cr, (maxc - g) / cr, (maxc - b) / cr
    rc, gc, bc = rc.double(), gc.double(), bc.double()
    h = torch.where(r == maxc, bc - gc, torch.where(g == maxc, 2.0 + rc - bc, 4.0 + gc - rc)).float()
    h = torch.fmod(h.double() / 6.0 + 1.0, 1.0).float().double()
    grey = maxc == minc
    uh = torch.where(grey, 0.0, torch.trunc(h * 255.0).clamp(0, 255))
    us = torch.where(grey, 0.0, torch.trunc(s.double() * 255.0).clamp(0, 255))
    return torch.stack([uh, us, maxc.double()], 1).float()


def hsv_to_rgb_pil(hsv):
    h, s, v = (hsv[:, i].double() for i in range(3))
    i = torch.floor(h * 6.0 / 255.0)
    f = h * 6.0 / 255.0 - i
    fs = s / 255.0
    rnd = lambda t: torch.floor(t + 0.5).clamp(0, 255)
    p, q, t = rnd(v * (1.0 - fs)), rnd(v * (1.0 - fs * f)), rnd(v * (1.0 - fs * (1.0 - f)))
    i = i.long() % 6
    choices = {0: (v, t, p), 1: (q, v, p), 2: (p, v, t), 3: (p, q, v), 4: (t, p, v), 5: (v, p, q)}
    r = g = b = torch.zeros_like(v)
    for k, (cr, cg, cb) in choices.items():
        sel = i == k
        r, g, b = torch.where(sel, cr, r), torch.where(sel, cg, g), torch.where(sel, cb, b)
    grey = s == 0
    rgb = torch.stack([torch.where(grey, v, r), torch.where(grey, v, g), torch.where(grey, v, b)], 1)
    return rgb.float()


def adjust_hue(x, hue_factor):
    """torchvision's adjust_hue on a PIL image: H += int(hue * 255) modulo 256 in PIL's HSV."""
    hsv = rgb_to_hsv_pil(x)
    shift = torch.trunc(hue_factor * 255.0)
    hsv = torch.cat([torch.remainder(hsv[:, :1] + _b(shift), 256.0), hsv[:, 1:]], 1)
    return hsv_to_rgb_pil(hsv)


def color_jitter(x, bright, contrast, sat, hue, order):
    """torchvision ColorJitter: the four adjustments in the per-sample order `order` [B, 4] (a permutation of
    brightness 0, contrast 1, saturation 2, hue 3)."""
    for stage in range(4):
        k = order[:, stage]
        y = torch.where(_b(k == 0), enhance_brightness(x, bright), x)
        y = torch.where(_b(k == 1), enhance_contrast(x, contrast), y)
        y = torch.where(_b(k == 2), enhance_color(x, sat), y)
        x = torch.where(_b(k == 3), adjust_hue(x, hue), y)
    return x


# --------------------------------------------------------------------------------------------- crops

def random_resized_crop_params(n, h, w, device, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), attempts=10):
    """torchvision RandomResizedCrop.get_params for n images at once: the first of 10 proposals that fits,
    else the centre crop with the ratio clamped (the whole image for a square one). Returns i, j, ch, cw."""
    area = h * w
    target = area * (torch.rand(n, attempts, device=device) * (scale[1] - scale[0]) + scale[0])
    log_r = torch.rand(n, attempts, device=device) * (math.log(ratio[1]) - math.log(ratio[0])) + math.log(ratio[0])
    ar = torch.exp(log_r)
    cw = torch.round(torch.sqrt(target * ar))
    ch = torch.round(torch.sqrt(target / ar))
    ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = torch.argmax(ok.int(), 1, keepdim=True)
    any_ok = ok.any(1)
    cw = torch.where(any_ok, cw.gather(1, first)[:, 0], float(w))
    ch = torch.where(any_ok, ch.gather(1, first)[:, 0], float(h))
    i = torch.floor(torch.rand(n, device=device) * (h - ch + 1))
    j = torch.floor(torch.rand(n, device=device) * (w - cw + 1))
    return i.long(), j.long(), ch.long(), cw.long()


def _bilinear_taps(start, size, out, device):
    """PIL's bilinear resample (upscaling: support 1, 22-bit fixed point weights) of the window
    [start, start + size) to `out` samples: two source indices and two integer weights per output."""
    o = torch.arange(out, device=device, dtype=torch.float64) + 0.5
    size_f = size.double()[:, None]
    center = o[None, :] * size_f / out
    lo = torch.floor(center - 0.5)
    hi = lo + 1
    w_lo = 1 - (center - 0.5 - lo)
    w_hi = 1 - w_lo
    w_lo = torch.where(lo < 0, 0.0, w_lo)
    w_hi = torch.where(hi > size_f - 1, 0.0, w_hi)
    tot = w_lo + w_hi
    w_lo, w_hi = w_lo / tot, w_hi / tot
    k_lo, k_hi = torch.floor(0.5 + w_lo * 2 ** 22), torch.floor(0.5 + w_hi * 2 ** 22)
    lo = (lo.clamp(min=0) + start.double()[:, None]).long()
    hi = (torch.minimum(hi, size_f - 1) + start.double()[:, None]).long()
    return lo, hi, k_lo, k_hi


def resized_crop(x, i, j, ch, cw, out=32):
    """Crop [i, i + ch) x [j, j + cw) and resize it to out x out as PIL does (horizontal pass, uint8, vertical)."""
    b, c, h, w = x.shape
    xd = x.double()
    lo, hi, klo, khi = _bilinear_taps(j, cw, out, x.device)  # [B, out]
    g = lambda t: xd.gather(3, t[:, None, None, :].expand(b, c, h, out))
    hor = torch.floor((g(lo) * klo[:, None, None, :] + g(hi) * khi[:, None, None, :] + 2 ** 21) / 2 ** 22).clamp(0, 255)
    lo, hi, klo, khi = _bilinear_taps(i, ch, out, x.device)
    g = lambda t: hor.gather(2, t[:, None, :, None].expand(b, c, out, out))
    ver = torch.floor((g(lo) * klo[:, None, :, None] + g(hi) * khi[:, None, :, None] + 2 ** 21) / 2 ** 22).clamp(0, 255)
    return ver.float()


def hflip(x, flip):
    return torch.where(_b(flip), x.flip(3), x)


# --------------------------------------------------------------------------------------------- views

class BatchViews:
    """The three ProCo views of a uint8 batch [B, 3, 32, 32] (values as the per-image reference produces them
    after ToTensor + Normalize)."""

    def __init__(self, device):
        t, signed = _policy_tables()
        self.tab = {k: torch.tensor(v, device=device) for k, v in t.items()}
        self.signed = torch.tensor(signed, device=device)
        self.ops1 = {o for _, o, *_ in CIFAR10_POLICY}
        self.ops2 = {row[4] for row in CIFAR10_POLICY}
        self.mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(STD, device=device).view(1, 3, 1, 1)

    def _norm(self, x):
        return (x / 255.0 - self.mean) / self.std

    def autoaugment(self, x):
        b, dev = x.shape[0], x.device
        pol = torch.randint(0, len(CIFAR10_POLICY), (b,), device=dev)
        for stage, ops in (("1", self.ops1), ("2", self.ops2)):
            op = self.tab["op" + stage][pol]
            apply = torch.rand(b, device=dev) < self.tab["p" + stage][pol]
            sign = torch.where(torch.rand(b, device=dev) < 0.5, -1.0, 1.0)
            m = self.tab["m" + stage][pol] * torch.where(self.signed[op], sign, 1.0)
            x = apply_ops(x, torch.where(apply, op, -1), m, ops)
        return x

    def classifier(self, u8):
        """RandomCrop(32, padding 4) + flip + AutoAugment + Cutout(16, black) + Normalize."""
        b, c, h, w = u8.shape
        dev = u8.device
        x = F.pad(u8.float(), (4, 4, 4, 4))
        oy = torch.randint(0, 9, (b,), device=dev)
        ox = torch.randint(0, 9, (b,), device=dev)
        flip = torch.rand(b, device=dev) < 0.5
        ar = torch.arange(w, device=dev)
        rows = oy[:, None] + ar
        cols = torch.where(flip[:, None], ox[:, None] + (w - 1 - ar), ox[:, None] + ar)
        x = x[torch.arange(b, device=dev)[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        x = self.autoaugment(x)
        cy = torch.randint(0, h, (b, 1), device=dev)
        cx = torch.randint(0, w, (b, 1), device=dev)
        rin = (ar[None] >= cy - 8) & (ar[None] < cy + 8)
        cin = (ar[None] >= cx - 8) & (ar[None] < cx + 8)
        hole = (rin[:, :, None] & cin[:, None, :])[:, None]
        return torch.where(hole, -self.mean / self.std, self._norm(x))

    def contrastive(self, u8):
        """RandomResizedCrop(32) + flip + ColorJitter(0.4, 0.4, 0.4, 0.1) w.p. 0.8 + greyscale w.p. 0.2 + Normalize."""
        b, c, h, w = u8.shape
        dev = u8.device
        i, j, ch, cw = random_resized_crop_params(b, h, w, dev)
        x = resized_crop(u8.float(), i, j, ch, cw, out=h)
        x = hflip(x, torch.rand(b, device=dev) < 0.5)
        jit = torch.rand(b, device=dev) < 0.8
        u = torch.rand(b, 4, device=dev)
        order = torch.argsort(torch.rand(b, 4, device=dev), 1)
        y = color_jitter(x, 0.6 + 0.8 * u[:, 0], 0.6 + 0.8 * u[:, 1], 0.6 + 0.8 * u[:, 2], -0.1 + 0.2 * u[:, 3], order)
        x = torch.where(_b(jit), y, x)
        x = torch.where(_b(torch.rand(b, device=dev) < 0.2), grey_l(x).expand_as(x), x)
        return self._norm(x)


class DeviceLoader:
    """The training set as one uint8 tensor on the device; each epoch a device-side permutation, `N // batch`
    full batches (drop_last, as the official loader). Yields (list of views, labels) like the per-image loader."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, batch: int, views: int, device):
        self.x = torch.from_numpy(np.ascontiguousarray(images_hwc.transpose(0, 3, 1, 2))).to(device)
        self.y = torch.from_numpy(labels.astype(np.int64)).to(device)
        self.batch, self.views, self.device = batch, views, torch.device(device)
        self.aug = BatchViews(self.device)
        if len(self.y) < batch:
            raise ValueError(f"{len(self.y)} training images are fewer than one batch of {batch}")

    def __len__(self):
        return len(self.y) // self.batch

    def __iter__(self):
        perm = torch.randperm(len(self.y), device=self.device)
        for s in range(len(self)):
            idx = perm[s * self.batch:(s + 1) * self.batch]
            u8, y = self.x[idx], self.y[idx]
            views = [self.aug.classifier(u8)]
            if self.views == 3:
                views += [self.aug.contrastive(u8), self.aug.contrastive(u8)]
            yield views, y
