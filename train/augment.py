"""The per-image reference augmentation: ProCo's three views, one PIL image at a time, as the official code.

This module is the *reference*: it follows the official ProCo CIFAR code (LeapLabTHU/ProCo, `ProCo_cifar/main.py`
and `autoaug.py`) operation by operation, so that `gpu_augment.py` (whole batches on the training device) can be
tested against it. It is also a complete input pipeline of its own (`fit --pipeline per-image`).

Classifier view:   RandomCrop(32, padding 4) -> RandomHorizontalFlip -> AutoAugment (CIFAR-10 policy, 25 sub-policies,
                   grey (128) fill, bicubic shear, nearest translate/rotate) -> ToTensor -> Cutout(1 hole, 16) -> Normalize.
Contrastive views: RandomResizedCrop(32) (torchvision defaults: scale 0.08-1, ratio 3/4-4/3, bilinear)
                   -> RandomHorizontalFlip -> RandomApply(ColorJitter(0.4, 0.4, 0.4, 0.1), p 0.8)
                   -> RandomGrayscale(0.2) -> ToTensor -> Normalize.
ColorJitter is torchvision's own: the four jitters in a random order, hue as a shift of PIL's HSV hue channel.
"""
from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps
from torchvision import transforms as T

from .model import MEAN, STD

FILL = (128, 128, 128)  # the official policy's fill colour for geometric ops

# Magnitude tables of the official SubPolicy (10 bins each); translate is a fraction of the image size.
RANGES = {
    "shearX": np.linspace(0, 0.3, 10), "shearY": np.linspace(0, 0.3, 10),
    "translateX": np.linspace(0, 150 / 331, 10), "translateY": np.linspace(0, 150 / 331, 10),
    "rotate": np.linspace(0, 30, 10), "color": np.linspace(0.0, 0.9, 10),
    "posterize": np.round(np.linspace(8, 4, 10), 0).astype(int), "solarize": np.linspace(256, 0, 10),
    "contrast": np.linspace(0.0, 0.9, 10), "sharpness": np.linspace(0.0, 0.9, 10),
    "brightness": np.linspace(0.0, 0.9, 10),
    "autocontrast": np.zeros(10), "equalize": np.zeros(10), "invert": np.zeros(10),
}
OPS = tuple(RANGES)
# Ops whose magnitude takes a random sign in the official code (rotate does not: always counter-clockwise).
SIGNED = {"shearX", "shearY", "translateX", "translateY", "color", "contrast", "sharpness", "brightness"}

# The official CIFAR-10 policy: (p1, op1, magnitude bin 1, p2, op2, magnitude bin 2), 25 sub-policies.
CIFAR10_POLICY = (
    (0.1, "invert", 7, 0.2, "contrast", 6), (0.7, "rotate", 2, 0.3, "translateX", 9),
    (0.8, "sharpness", 1, 0.9, "sharpness", 3), (0.5, "shearY", 8, 0.7, "translateY", 9),
    (0.5, "autocontrast", 8, 0.9, "equalize", 2), (0.2, "shearY", 7, 0.3, "posterize", 7),
    (0.4, "color", 3, 0.6, "brightness", 7), (0.3, "sharpness", 9, 0.7, "brightness", 9),
    (0.6, "equalize", 5, 0.5, "equalize", 1), (0.6, "contrast", 7, 0.6, "sharpness", 5),
    (0.7, "color", 7, 0.5, "translateX", 8), (0.3, "equalize", 7, 0.4, "autocontrast", 8),
    (0.4, "translateY", 3, 0.2, "sharpness", 6), (0.9, "brightness", 6, 0.2, "color", 8),
    (0.5, "solarize", 2, 0.0, "invert", 3), (0.2, "equalize", 0, 0.6, "autocontrast", 0),
    (0.2, "equalize", 8, 0.6, "equalize", 4), (0.9, "color", 9, 0.6, "equalize", 6),
    (0.8, "autocontrast", 4, 0.2, "solarize", 8), (0.1, "brightness", 3, 0.7, "color", 0),
    (0.4, "solarize", 5, 0.9, "autocontrast", 3), (0.9, "translateY", 9, 0.7, "translateY", 9),
    (0.9, "autocontrast", 2, 0.8, "solarize", 3), (0.8, "equalize", 8, 0.1, "invert", 3),
    (0.7, "translateY", 9, 0.9, "autocontrast", 1),
)


def apply_op(img: Image.Image, op: str, magnitude: float, sign: int = 1) -> Image.Image:
    """One AutoAugment operation on an RGB PIL image, with PIL's semantics as the official policy uses them.
    `sign` is the random +-1 the official code draws for the signed ops (ignored by the others)."""
    m = magnitude * sign if op in SIGNED else magnitude
    w, h = img.size
    if op == "shearX":
        return img.transform(img.size, Image.AFFINE, (1, m, 0, 0, 1, 0), Image.BICUBIC, fillcolor=FILL)
    if op == "shearY":
        return img.transform(img.size, Image.AFFINE, (1, 0, 0, m, 1, 0), Image.BICUBIC, fillcolor=FILL)
    if op == "translateX":
        return img.transform(img.size, Image.AFFINE, (1, 0, m * w, 0, 1, 0), fillcolor=FILL)
    if op == "translateY":
        return img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, m * h), fillcolor=FILL)
    if op == "rotate":  # nearest, grey where the rotated image does not reach
        rot = img.convert("RGBA").rotate(m)
        return Image.composite(rot, Image.new("RGBA", rot.size, (128,) * 4), rot).convert(img.mode)
    if op == "color":
        return ImageEnhance.Color(img).enhance(1 + m)
    if op == "contrast":
        return ImageEnhance.Contrast(img).enhance(1 + m)
    if op == "sharpness":
        return ImageEnhance.Sharpness(img).enhance(1 + m)
    if op == "brightness":
        return ImageEnhance.Brightness(img).enhance(1 + m)
    if op == "posterize":
        return ImageOps.posterize(img, int(m))
    if op == "solarize":
        return ImageOps.solarize(img, m)
    if op == "autocontrast":
        return ImageOps.autocontrast(img)
    if op == "equalize":
        return ImageOps.equalize(img)
    if op == "invert":
        return ImageOps.invert(img)
    raise ValueError(op)


class CIFAR10Policy:
    """Per image: one of the 25 sub-policies uniformly; each of its two ops with its own probability, a fresh
    random sign per signed op (Python's `random`, as the official code)."""

    def __init__(self, rng: random.Random | None = None):
        self.rng = rng or random

    def __call__(self, img: Image.Image) -> Image.Image:
        p1, op1, b1, p2, op2, b2 = CIFAR10_POLICY[self.rng.randint(0, len(CIFAR10_POLICY) - 1)]
        if self.rng.random() < p1:
            img = apply_op(img, op1, RANGES[op1][b1], self.rng.choice([-1, 1]))
        if self.rng.random() < p2:
            img = apply_op(img, op2, RANGES[op2][b2], self.rng.choice([-1, 1]))
        return img


class Cutout:
    """One hole of `length` x `length` (clipped at the border), centred on a uniform pixel, set to 0 on the
    [0, 1] tensor, i.e. black, before normalisation (DeVries & Taylor 2017; official order)."""

    def __init__(self, length: int = 16):
        self.length = length

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[1:]
        y, x = np.random.randint(h), np.random.randint(w)
        y0, y1 = np.clip(y - self.length // 2, 0, h), np.clip(y + self.length // 2, 0, h)
        x0, x1 = np.clip(x - self.length // 2, 0, w), np.clip(x + self.length // 2, 0, w)
        img = img.clone()
        img[:, y0:y1, x0:x1] = 0
        return img


def classifier_view():
    return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), CIFAR10Policy(), T.ToTensor(),
                      Cutout(16), T.Normalize(MEAN, STD)])


def contrastive_view():
    return T.Compose([T.RandomResizedCrop(32), T.RandomHorizontalFlip(),
                      T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(p=0.2),
                      T.ToTensor(), T.Normalize(MEAN, STD)])


class ViewsDataset(torch.utils.data.Dataset):
    """uint8 HWC images in memory -> (views, label); views = 1 (classifier view only) or 3 (ProCo: classifier
    view and two contrastive views), as the official three-transform dataset."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, views: int):
        self.images, self.labels, self.views = images, labels, views
        self.cls_view, self.sim_view = classifier_view(), contrastive_view()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i])
        out = [self.cls_view(img)]
        if self.views == 3:
            out += [self.sim_view(img), self.sim_view(img)]
        return out, int(self.labels[i])
