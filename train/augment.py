"""The three ProCo views: AutoAugment + Cutout for the classifier, SimCLR-style for the contrastive pair."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

from .model import MEAN, STD


class Cutout:
    """Zero one random 16x16 square (DeVries & Taylor 2017), on a normalised CHW tensor."""

    def __init__(self, length: int = 16):
        self.length = length

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[1:]
        y, x = np.random.randint(h), np.random.randint(w)
        y0, y1 = max(0, y - self.length // 2), min(h, y + self.length // 2)
        x0, x1 = max(0, x - self.length // 2), min(w, x + self.length // 2)
        img = img.clone()
        img[:, y0:y1, x0:x1] = 0
        return img


def classifier_view():
    return T.Compose([
        T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(),
        T.AutoAugment(T.AutoAugmentPolicy.CIFAR10), T.ToTensor(), T.Normalize(MEAN, STD), Cutout(16),
    ])


class BatchContrastiveView:
    """The contrastive view, applied to a whole batch on the training device (GPU) instead of per image in
    PIL: random resized crop (scale 0.2-1, ratio 3/4-4/3) + flip through one affine grid-sample, colour jitter
    (brightness, contrast, saturation 0.4; hue 0.1 as a rotation of the YIQ chroma plane) with p 0.8, and
    greyscale with p 0.2. It moves two thirds of ProCo's augmentation work off the CPU."""

    GREY = (0.299, 0.587, 0.114)

    def __init__(self, device):
        self.mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
        self.grey = torch.tensor(self.GREY, device=device).view(1, 3, 1, 1)

    def _u(self, n, lo, hi, like):
        return torch.rand(n, device=like.device) * (hi - lo) + lo

    def _grey(self, x):
        return (x * self.grey).sum(1, keepdim=True)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N,3,H,W] float in [0,1] -> normalised augmented view."""
        n = x.shape[0]
        area = self._u(n, 0.2, 1.0, x)
        ratio = torch.exp(self._u(n, math.log(3 / 4), math.log(4 / 3), x))
        w = torch.sqrt(area * ratio).clamp(max=1.0)
        h = torch.sqrt(area / ratio).clamp(max=1.0)
        cx = self._u(n, -1.0, 1.0, x) * (1 - w)
        cy = self._u(n, -1.0, 1.0, x) * (1 - h)
        flip = torch.where(torch.rand(n, device=x.device) < 0.5, -1.0, 1.0)
        theta = torch.zeros(n, 2, 3, device=x.device)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * flip, cx, h, cy
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

        j = out * self._u(n, 0.6, 1.4, x).view(n, 1, 1, 1)
        j = j.clamp(0, 1)
        m = self._grey(j).mean((2, 3), keepdim=True)
        j = ((j - m) * self._u(n, 0.6, 1.4, x).view(n, 1, 1, 1) + m).clamp(0, 1)
        g = self._grey(j)
        j = ((j - g) * self._u(n, 0.6, 1.4, x).view(n, 1, 1, 1) + g).clamp(0, 1)
        j = _hue_rotate(j, self._u(n, -0.1, 0.1, x) * 2 * math.pi).clamp(0, 1)
        out = torch.where((torch.rand(n, device=x.device) < 0.8).view(n, 1, 1, 1), j, out)
        out = torch.where((torch.rand(n, device=x.device) < 0.2).view(n, 1, 1, 1), self._grey(out).expand_as(out), out)
        return (out - self.mean) / self.std


_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _hue_rotate(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    m = _RGB2YIQ.to(x.device)
    yiq = torch.einsum("ij,njhw->nihw", m, x)
    c, s = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], c * i - s * q, s * i + c * q], 1)
    return torch.einsum("ij,njhw->nihw", torch.linalg.inv(m), yiq)


class ViewsDataset(torch.utils.data.Dataset):
    """uint8 HWC images in memory -> (views, label).

    views = 1 (CE, LA): [classifier view]. views = 3 (ProCo): [classifier view, the raw uint8 CHW image],
    the two contrastive views being drawn from the raw image on the device by `BatchContrastiveView`."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, views: int):
        self.images, self.labels, self.views = images, labels, views
        self.cls_view = classifier_view()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i])
        out = [self.cls_view(img)]
        if self.views == 3:
            out.append(torch.from_numpy(self.images[i]).permute(2, 0, 1).contiguous())
        return out, int(self.labels[i])
