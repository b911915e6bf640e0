"""The three ProCo views: AutoAugment + Cutout for the classifier, SimCLR-style for the contrastive pair."""
from __future__ import annotations

import numpy as np
import torch
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


def contrastive_view():
    return T.Compose([
        T.RandomResizedCrop(32, scale=(0.2, 1.0)), T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(p=0.2),
        T.ToTensor(), T.Normalize(MEAN, STD),
    ])


class ViewsDataset(torch.utils.data.Dataset):
    """uint8 HWC images in memory -> (views, label); `views` = 1 (CE, LA) or 3 (ProCo)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, views: int):
        self.images, self.labels, self.views = images, labels, views
        self.cls_view, self.con_view = classifier_view(), contrastive_view()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i])
        out = [self.cls_view(img)]
        out += [self.con_view(img) for _ in range(self.views - 1)]
        return out, int(self.labels[i])
