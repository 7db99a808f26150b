"""The evaluation networks of the cross-architecture table, as PyTorch modules to export with
`tools/export_model.py` (`transfer_models:NAME`: the script's folder is on the module path).

They follow the shapes of the trajectory-matching papers' evaluation code: VGG-11 and AlexNet
pad a 1-channel 28×28 image to 32×32 in their first convolution, so the same pooling stack
serves both image sizes. `width` scales every layer, so the table can be sized for a CPU.

    python3 tools/export_model.py transfer_models:vgg11 --input 1x28x28 --out vgg11.onnx
"""
import torch
from torch import nn


def _pad_first(channels):
    """Padding of the first convolution: 1-channel 28×28 images are padded up to 32×32."""
    return 3 if channels == 1 else 1


class VGG11(nn.Module):
    """VGG-11 with BatchNorm after every convolution and one linear classifier."""

    def __init__(self, channels=1, num_classes=10, width=64):
        super().__init__()
        cfg = [1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M"]
        layers, c = [], channels
        for i, v in enumerate(cfg):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            out = v * width
            pad = _pad_first(channels) if i == 0 else 1
            layers += [nn.Conv2d(c, out, 3, padding=pad), nn.BatchNorm2d(out), nn.ReLU()]
            c = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class AlexNet(nn.Module):
    """AlexNet as the dataset-condensation benchmarks size it for 32×32 images."""

    def __init__(self, channels=1, num_classes=10, width=64):
        super().__init__()
        w = [2 * width, 3 * width, 4 * width, 3 * width, 3 * width]
        w = [v // 2 for v in w]
        self.features = nn.Sequential(
            nn.Conv2d(channels, w[0], 5, padding=4 if channels == 1 else 2), nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(w[0], w[1], 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(w[1], w[2], 3, padding=1), nn.ReLU(),
            nn.Conv2d(w[2], w[3], 3, padding=1), nn.ReLU(),
            nn.Conv2d(w[3], w[4], 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
        )
        self.fc = nn.Linear(w[4] * 4 * 4, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


def vgg11(channels=1, num_classes=10, width=64):
    """VGG-11 (BatchNorm), `width` channels in its first layer."""
    return VGG11(channels, num_classes, width)


def alexnet(channels=1, num_classes=10, width=64):
    """AlexNet, 2·`width`/2 = `width` channels in its first layer at the default."""
    return AlexNet(channels, num_classes, width)


def resnet18(channels=1, num_classes=10):
    """torchvision's ResNet-18 (BatchNorm, ImageNet stem) with a `channels`-channel input."""
    import torchvision

    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(channels, 64, 7, 2, 3, bias=False)
    return model
