"""ProCo's networks: ResNet-32 (CIFAR variant) and ResNet-50 / ResNeXt-50 (ImageNet-LT, iNaturalist), each with
the projection head and the classifier of the official code."""
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


class NormedLinear(nn.Module):
    """Cosine classifier s * cos(h, w_y) (LDAM-DRW's `use_norm`; s = 30 folded in as in ProCo's NormedLinear),
    so that the exported logits are the ones the LDAM loss saw before its margins."""

    def __init__(self, cin: int, cout: int, s: float = 30.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cin, cout).uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5))
        self.s = s

    def forward(self, x):
        return self.s * F.normalize(x, dim=1).mm(F.normalize(self.weight, dim=0))


class ProCoResNet32(nn.Module):
    """Backbone feature h (64-d) -> linear head logits; h -> MLP(64-512-128) -> unit z.

    As the official `resnet_cifar.py`: Kaiming-normal initialisation on the encoder's convolutions only; the
    projection head and the classifier keep PyTorch's default initialisation. `normed_fc` swaps the linear
    classifier for the cosine one (LDAM-DRW)."""

    def __init__(self, classes: int = 10, feat_dim: int = 128, blocks: int = 5, normed_fc: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for b in range(blocks):
                layers.append(BasicBlock(cin, cout, stride if b == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        for m in self.modules():  # the encoder only: head and fc are created below, after this loop
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
        self.head = nn.Sequential(nn.Linear(64, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Linear(512, feat_dim))
        self.fc = NormedLinear(64, classes) if normed_fc else nn.Linear(64, classes)

    def embed(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x):
        h = self.embed(x)
        return h, self.fc(h)

    def project(self, h):
        return F.normalize(self.head(h), dim=1)


class ProCoResNet50(nn.Module):
    """The official ImageNet-LT / iNaturalist model (`ProCo/models/resnext.py`): torchvision's ResNet-50 or
    ResNeXt-50 32x4d without its fc as the encoder (2048-d h), head MLP(2048-2048-1024) to the unit z, and the
    cosine classifier NormedLinear(2048, C) (or a plain linear one). Parameter names as the official ones, less
    DistributedDataParallel's `module.` prefix."""

    def __init__(self, classes: int = 1000, arch: str = "resnet50", feat_dim: int = 1024, normed_fc: bool = True):
        super().__init__()
        import torchvision

        build = {"resnet50": torchvision.models.resnet50, "resnext50": torchvision.models.resnext50_32x4d}[arch]
        self.encoder = build(weights=None)
        self.encoder.fc = nn.Identity()
        self.head = nn.Sequential(nn.Linear(2048, 2048), nn.BatchNorm1d(2048), nn.ReLU(inplace=True),
                                  nn.Linear(2048, feat_dim))
        self.fc = NormedLinear(2048, classes) if normed_fc else nn.Linear(2048, classes)

    def embed(self, x):
        return self.encoder(x)

    def forward(self, x):
        h = self.embed(x)
        return h, self.fc(h)

    def project(self, h):
        return F.normalize(self.head(h), dim=1)


class ExportWrapper(nn.Module):
    """The served graph: image in [0,1] RGB -> (feature z, logits, embedding h); the channel normalisation the
    model was trained with is part of the graph."""

    def __init__(self, model: nn.Module, mean=MEAN, std=STD):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, image):
        x = (image - self.mean) / self.std
        h, logits = self.model(x)
        return self.model.project(h), logits, h
