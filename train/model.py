"""ResNet-32 (CIFAR variant) with ProCo's projection head and linear classifier."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

# CIFAR-10 channel statistics; the exported graph applies them itself, so clients send pixels in [0, 1].
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)


class BasicBlock(nn.Module):
    """3x3-3x3 residual block with the parameter-free 'option A' shortcut of He et al. 2016."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = (cout - cin) // 2 if (stride != 1 or cin != cout) else None

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x if self.pad is None else F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + short)


class ProCoResNet32(nn.Module):
    """Backbone feature h (64-d) -> linear head logits; h -> MLP(64-512-128) -> unit z."""

    def __init__(self, classes: int = 10, feat_dim: int = 128, blocks: int = 5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for b in range(blocks):
                layers.append(BasicBlock(cin, cout, stride if b == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(64, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Linear(512, feat_dim))
        self.fc = nn.Linear(64, classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def embed(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x):
        h = self.embed(x)
        return h, self.fc(h)

    def project(self, h):
        return F.normalize(self.head(h), dim=1)


class ExportWrapper(nn.Module):
    """The served graph: image in [0,1] RGB -> (feature z, logits, embedding h)."""

    def __init__(self, model: ProCoResNet32):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

    def forward(self, image):
        x = (image - self.mean) / self.std
        h, logits = self.model(x)
        return self.model.project(h), logits, h
