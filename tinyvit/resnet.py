"""ResNet-18/34/50 (He et al. 2016), the convolutional baseline, with torchvision's module names.

conv1, bn1, layer1..layer4 (each a list of blocks with conv1/bn1/conv2/bn2[/conv3/bn3] and an
optional downsample = [1x1 conv, BN]), fc: a torchvision state dict loads 1:1. The bottleneck
puts the stride in its 3x3 convolution ("ResNet v1.5", as torchvision and every torchvision
weight file), not in the first 1x1 as the paper did.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tinyvit.checks import check_input_dtype, check_int, is_int, take_indices


@dataclass
class ResNetConfig:
    block: str = "basic"  # "basic" (two 3x3, ResNet-18/34) or "bottleneck" (1x1, 3x3, 1x1; ResNet-50)
    layers: tuple = (2, 2, 2, 2)  # blocks per stage
    num_classes: int = 1000  # 0: no fc, forward returns the pooled features
    in_channels: int = 3

    def __post_init__(self):
        self.layers = tuple(self.layers)
        if self.block not in ("basic", "bottleneck"):
            raise ValueError(f"ResNetConfig.block={self.block!r}; expected 'basic' or 'bottleneck'")
        if len(self.layers) != 4:
            raise ValueError(f"ResNetConfig.layers must list 4 stages, got {self.layers}")
        # Every stage builds at least one block (it carries the stride), so 0 would be silently 1.
        if not all(is_int(n) and n >= 1 for n in self.layers):
            raise ValueError(f"ResNetConfig.layers={self.layers}; expected 4 positive block counts")
        check_int(self, "num_classes", minimum=0)
        check_int(self, "in_channels", minimum=1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layers"] = list(self.layers)
        return d


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = conv1x1(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)  # v1.5: the stride sits here
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, cfg: Optional[ResNetConfig] = None, **kwargs):
        super().__init__()
        cfg = cfg if cfg is not None else ResNetConfig(**kwargs)
        self.cfg = cfg
        block = BasicBlock if cfg.block == "basic" else Bottleneck

        # Stem: [b, 3, 224, 224] -> [b, 64, 56, 56]
        self.conv1 = nn.Conv2d(cfg.in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        # Four stages; each but the first halves the resolution: 56 -> 56, 28, 14, 7.
        cin = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), cfg.layers)):
            stride = 1 if i == 0 else 2
            downsample = None
            if stride != 1 or cin != planes * block.expansion:
                downsample = nn.Sequential(
                    conv1x1(cin, planes * block.expansion, stride), nn.BatchNorm2d(planes * block.expansion)
                )
            blocks = [block(cin, planes, stride, downsample)]
            cin = planes * block.expansion
            blocks += [block(cin, planes) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))

        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = cin
        self.global_pool = "avg"  # timm's name: "avg", or "" (forward_head returns the feature map)
        self.fc = nn.Linear(cin, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.preprocess = None  # set by create_model / load_pretrained
        self.grad_checkpointing = False  # set_grad_checkpointing
        self.reset_parameters()

    def reset_parameters(self):
        """torchvision's initialisation: Kaiming-normal convs, BN weight 1 and bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def stages(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def check_input(self, x: torch.Tensor) -> None:
        c = self.cfg.in_channels
        if x.ndim != 4 or x.shape[1] != c:
            raise ValueError(f"expected a batch of images [B, {c}, H, W], got shape {tuple(x.shape)}")
        if x.shape[2] < 32 or x.shape[3] < 32:
            raise ValueError(
                f"expected images of at least 32x32 pixels (the network downsamples by 32), got "
                f"{x.shape[2]}x{x.shape[3]} (input shape {tuple(x.shape)})"
            )
        check_input_dtype(x, self.conv1.weight)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def run_stage(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """One stage; with set_grad_checkpointing, in training with autograd on, each block's
        activations are recomputed in the backward instead of stored (timm's checkpoint_seq)."""
        if not (self.grad_checkpointing and self.training and torch.is_grad_enabled()):
            return stage(x)
        for blk in stage:
            x = checkpoint(blk, x, use_reentrant=False)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> the last feature map [b, C, H/32, W/32]."""
        x = self.stem(x)
        for stage in self.stages:
            x = self.run_stage(stage, x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "":
            return x  # timm's global_pool='': the feature map itself [b, C, h, w]
        x = torch.flatten(self.avgpool(x), 1)  # [b, C]
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> "ResNet":
        """A new fc for `num_classes` (0: none). global_pool, timm's: 'avg', or '' with no fc for
        the unpooled feature map (feature extraction); None keeps the current one."""
        if not is_int(num_classes) or num_classes < 0:
            raise ValueError(f"num_classes={num_classes!r}; expected an integer >= 0 (0: no fc)")
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool={global_pool!r}; expected 'avg' or '' (no pooling)")
            if global_pool == "" and num_classes:
                raise ValueError(f"global_pool='' with num_classes={num_classes}: the unpooled feature map "
                                 f"has no classifier; use num_classes=0")
            self.global_pool = global_pool
        self.cfg.num_classes = num_classes
        if num_classes == 0:
            self.fc = nn.Identity()
        else:
            dev = self.conv1.weight.device
            self.fc = nn.Linear(self.num_features, num_classes, device=dev)
        return self

    # -- timm's model interface ---------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    def get_classifier(self) -> nn.Module:
        return self.fc

    @property
    def head_hidden_size(self) -> int:
        return self.num_features

    @property
    def feature_info(self) -> list[dict]:
        """What forward_intermediates returns, as timm lists it (tinyvit's module names)."""
        width = 4 if self.cfg.block == "bottleneck" else 1
        info = [dict(num_chs=64, reduction=2, module="relu")]
        return info + [dict(num_chs=c * width, reduction=r, module=f"layer{i + 1}")
                       for i, (c, r) in enumerate(zip((64, 128, 256, 512), (4, 8, 16, 32)))]

    @property
    def pretrained_cfg(self) -> dict:
        """timm's pretrained_cfg, built from `preprocess` (timm.data.resolve_data_config reads it)."""
        out = dict(num_classes=self.cfg.num_classes, first_conv="conv1", classifier="fc", fixed_input_size=False)
        if self.preprocess is not None:
            out.update(self.preprocess.timm_cfg(self.cfg.in_channels))
        return out

    @property
    def default_cfg(self) -> dict:
        return self.pretrained_cfg

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's parameter groups for layer-wise lr decay: the stem, then each block (coarse: each stage)."""
        return dict(stem=r"^conv1|bn1|maxpool", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward (timm's call; returns None as timm's)."""
        self.grad_checkpointing = bool(enable)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices=None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """timm's feature maps by index: 0 the stem (after conv1, bn1, relu; before the max-pool),
        1..4 the stages. indices: None all five, an int n the last n, a list those. `norm` is
        accepted for timm's signature; a ResNet has no final norm to apply."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r}; a ResNet's feature maps are 'NCHW'")
        take = take_indices(5, indices)
        self.check_input(x)
        x = self.relu(self.bn1(self.conv1(x)))
        intermediates = [x] if 0 in take else []
        x = self.maxpool(x)
        stages = self.stages[: max(take)] if stop_early else self.stages
        for i, stage in enumerate(stages, start=1):
            x = self.run_stage(stage, x)
            if i in take:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    # -- what training and the formats ask of every tinyvit model (vit.py and fdvit.py answer too) ---

    arch = "resnet"  # the name config.json, checkpoint.pt and the presets record
    units_name = "stages"  # what --unfreeze N counts

    def units(self) -> list[tuple[str, nn.Module]]:
        """The four stages --unfreeze counts, first to last, with their state-dict names."""
        return [(f"layer{i + 1}", stage) for i, stage in enumerate(self.stages)]

    def stem_modules(self) -> list[tuple[str, nn.Module]]:
        """What runs before the first stage: frozen with it."""
        return [(n, getattr(self, n)) for n in ("conv1", "bn1", "relu", "maxpool")]

    def head_modules(self) -> list[tuple[str, nn.Module]]:
        """What trains in every --unfreeze mode: the fc alone (the last BatchNorm sits inside layer4)."""
        return [("fc", self.fc)]

    def forward_prefix(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Images -> the feature map entering stage k [b, C, H, W]."""
        x = self.stem(x)  # [b, 64, H/4, W/4]
        for stage in self.stages[:k]:
            x = stage(x)
        return x

    def forward_suffix(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """forward_prefix(images, k) -> logits."""
        for stage in self.stages[k:]:
            x = stage(x)
        return self.forward_head(x)

    def set_image_size(self, image_size: int) -> "ResNet":
        """A ResNet takes any size (global average pooling, no position table): only the preprocessing
        the weights are served with changes."""
        if self.preprocess is not None:
            self.preprocess = self.preprocess.with_image_size(image_size)
        return self

    def inference_state(self) -> tuple[dict, dict]:
        """(config, state dict): what tinyvit.save_pretrained writes."""
        return self.cfg.to_dict(), self.state_dict()

    distilled_training = False  # timm's switch of a distilled DeiT's two heads; one head here

    def set_distilled_training(self, enable: bool = True) -> None:
        """timm's call for a distilled DeiT; a ResNet has one head, so there is nothing to switch."""

    def set_reconstruction(self, mask_prob: Optional[float]) -> "ResNet":
        """FDViT's masked reconstruction of its FD layers; a ResNet has none, so only None is accepted."""
        if mask_prob is not None:
            raise ValueError("a ResNet has no FD layers to train (an FDViT has)")
        return self
