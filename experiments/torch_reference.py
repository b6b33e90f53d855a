"""Reference networks in PyTorch, restated from their sources, for the conversion tests.

`TorchvisionResNet` follows torchvision.models.resnet (v1.5: the bottleneck stride is on the 3x3), `CifarResNet`
follows akamaster/pytorch_resnet_cifar10 (option-A shortcuts padding planes//4 zero channels on each side), and
`MMPretrainClassifier` with `ResNetV1dBackbone` or a CIFAR-stem `TorchvisionResNet` follows mmpretrain's
ImageClassifier, ResNetV1d and ResNet_CIFAR. torchvision
itself is not importable beside the CPU build of torch on our machines, hence the restatement; the tests compare our
Flax models against these on the same weights.
"""

import jax.numpy as jnp
import optax
import torch
import torch.nn.functional as F
from torch import nn

from resnet_jax.convert import load_torch_state_dict
from resnet_jax.run.state import TrainState


class TvBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class TvBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchvisionResNet(nn.Module):
    """torchvision's ResNet; with `cifar_stem`, mmpretrain's ResNet_CIFAR (conv1 3x3 stride 1, no max pool)."""

    def __init__(self, block, layers, num_classes=1000, cifar_stem=False):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False) if cifar_stem else nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.Identity() if cifar_stem else nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], 2)
        self.layer3 = self._make_layer(block, 256, layers[2], 2)
        self.layer4 = self._make_layer(block, 512, layers[3], 2)
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class CifarBlock(nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes // 4 if (stride != 1 or in_planes != planes) else None

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.pad is None else F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    def __init__(self, n, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        planes_in = 16
        for i, planes in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                blocks.append(CifarBlock(planes_in, planes, 2 if i > 0 and j == 0 else 1))
                planes_in = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


class ConvModule(nn.Module):
    """mmcv's ConvModule as ResNetV1d's stem uses it: conv, bn, ReLU."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class ResNetV1dBackbone(nn.Module):
    """mmpretrain's ResNetV1d restated: deep stem, max pool, v1.5 bottlenecks, AvgPool2d(ceil_mode,
    count_include_pad=False) before a stride-1 projection in strided shortcuts; returns pooled features."""

    def __init__(self, layers):
        super().__init__()
        self.stem = nn.Sequential(ConvModule(3, 32, 2), ConvModule(32, 32, 1), ConvModule(32, 64, 1))
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True), 1):
            stride = 1 if stage == 1 else 2
            pool = [nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)] if stride > 1 else []
            conv = nn.Conv2d(inplanes, planes * 4, 1, bias=False)
            downsample = nn.Sequential(*pool, conv, nn.BatchNorm2d(planes * 4))
            stack = [TvBottleneck(inplanes, planes, stride, downsample)]
            stack += [TvBottleneck(planes * 4, planes) for _ in range(1, blocks)]
            setattr(self, f"layer{stage}", nn.Sequential(*stack))
            inplanes = planes * 4

    def forward(self, x):
        x = self.maxpool(self.stem(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


class MMPretrainClassifier(nn.Module):
    """mmpretrain's ImageClassifier: `backbone` (pooled features here), `head.fc`."""

    def __init__(self, backbone, features, num_classes):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Module()
        self.head.fc = nn.Linear(features, num_classes)

    def forward(self, x):
        return self.head.fc(self.backbone(x))


def he_initialised(model_name: str, reference: nn.Module, optimizer: optax.GradientTransformation, **options):
    """PyTorch's net `reference` He-initialised and in training mode, and our TrainState of `model_name` (with
    `options`) holding the same weights, so that the two train steps can be compared from one starting point. Seed
    torch (`torch.manual_seed`) before building `reference`: its weights are drawn from torch's global generator."""
    for m in reference.modules():  # He init, as both implementations use
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
    reference.train()
    variables = load_torch_state_dict(model_name, {k: v.numpy() for k, v in reference.state_dict().items()}, **options)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        opt_state=optimizer.init(variables["params"]),
    )
    return reference, state


def he_initialised_cifar_resnet(model_name: str, seed: int, optimizer: optax.GradientTransformation):
    """`he_initialised` for a CIFAR ResNet-6n+2 (PyTorch's `CifarResNet`)."""
    torch.manual_seed(seed)
    reference = CifarResNet(n=(int(model_name.removeprefix("resnet")) - 2) // 6)
    return he_initialised(model_name, reference, optimizer)
