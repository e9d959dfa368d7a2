"""MTAN on SegNet (Liu, Johns & Davison 2019), the model of NYUv2 and Cityscapes in Nash-MTL, FAMO and PIVRG.

A SegNet encoder–decoder shared by every task (VGG-style 3×3 conv–BN–ReLU blocks, filters
64/128/256/512/512, 2, 2, 3, 3, 3 convolutions per encoder stage, max-pooling whose indices drive the
decoder's unpooling) and, per task, one soft attention mask per stage of the encoder and of the decoder
(1×1 conv–BN–ReLU–1×1 conv–BN–sigmoid) that gates the shared stage's output. Each task's attended
features at full resolution (64 channels) go through its head: a 3×3 and a 1×1 convolution.

Design choices taken from the Nash-MTL / PIVRG authors' ``SegNetMtan`` (read for facts, not copied):

* the attention path chains the stages: an encoder mask reads the stage's first convolution concatenated
  with the previous attended stage (after a shared 3×3 block and 2×2 max-pooling); a decoder mask reads the
  unpooled shared features concatenated with the previous attended stage (bilinear ×2 upsampling,
  ``align_corners=True``, and a shared 3×3 block);
* the attention blocks are *shared parameters* (everything except the heads is, as the authors' Jacobian is
  taken over every parameter whose name lacks ``pred``); :meth:`MTANSegNet.shared_parameters` follows them;
* Xavier-normal convolution weights, zero biases, BN weight 1 and bias 0;
* the heads output raw maps; log-softmax (segmentation) and L2 normalisation (normals) are the benchmark's
  output transforms (:mod:`.dense`).

Inputs need heights and widths divisible by 32 (five 2×2 poolings).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MTANSegNet", "FILTERS"]

FILTERS: tuple[int, ...] = (64, 128, 256, 512, 512)
#: convolutions after the first one in each encoder stage (the decoder mirrors them).
_EXTRA_CONVS: tuple[int, ...] = (1, 1, 2, 2, 2)


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _stack(channels: int, count: int) -> nn.Sequential:
    return nn.Sequential(*[_conv(channels, channels) for _ in range(count)])


def _attention(cin: int, cout: int) -> nn.Sequential:
    """MTAN's soft mask: 1×1 conv–BN–ReLU–1×1 conv–BN–sigmoid."""
    return nn.Sequential(nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 1), nn.BatchNorm2d(cout), nn.Sigmoid())


class MTANSegNet(nn.Module):
    """MTAN-SegNet with ``len(head_channels)`` tasks; ``forward(x)`` returns the ``k`` raw head maps ``[B, C_t, H, W]``.

    Args:
        head_channels: output channels of each task's head (NYUv2: 13, 1, 3; Cityscapes: 7, 1).
        in_channels: input image channels.
    """

    def __init__(self, head_channels: Sequence[int], in_channels: int = 3) -> None:
        super().__init__()
        f = FILTERS
        k = len(head_channels)
        if k < 1:
            raise ValueError("MTANSegNet needs at least one task head.")
        stages = range(len(f))
        # Shared SegNet. Decoder stage j runs from the deepest (j = 0) to the shallowest (j = 4).
        self.encoder_first = nn.ModuleList(_conv(in_channels if s == 0 else f[s - 1], f[s]) for s in stages)
        self.encoder_rest = nn.ModuleList(_stack(f[s], _EXTRA_CONVS[s]) for s in stages)
        decoder_out = [f[max(len(f) - 2 - j, 0)] for j in stages]                  # 512, 256, 128, 64, 64
        decoder_in = [f[-1]] + decoder_out[:-1]
        self.decoder_first = nn.ModuleList(_conv(decoder_in[j], decoder_out[j]) for j in stages)
        self.decoder_rest = nn.ModuleList(_stack(decoder_out[j], _EXTRA_CONVS[len(f) - 1 - j]) for j in stages)
        # Attention: per-task masks, and the 3×3 blocks between masks that every task shares.
        self.encoder_masks = nn.ModuleList(
            nn.ModuleList(_attention(f[0] if s == 0 else 2 * f[s], f[s]) for s in stages) for _ in range(k))
        self.encoder_links = nn.ModuleList(_conv(f[s], f[min(s + 1, len(f) - 1)]) for s in stages)
        self.decoder_links = nn.ModuleList(_conv(decoder_in[j], decoder_out[j]) for j in stages)
        self.decoder_masks = nn.ModuleList(
            nn.ModuleList(_attention(decoder_in[j] + decoder_out[j], decoder_out[j]) for j in stages) for _ in range(k))
        self.heads = nn.ModuleList(nn.Sequential(nn.Conv2d(f[0], f[0], 3, padding=1), nn.Conv2d(f[0], c, 1))
                                   for c in head_channels)
        self._initialise()

    def _initialise(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_normal_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def num_tasks(self) -> int:
        return len(self.heads)

    def shared_parameters(self) -> list[nn.Parameter]:
        """Every parameter but the heads' (SegNet and the attention modules, as the authors' Jacobian)."""
        heads = {id(p) for p in self.heads.parameters()}
        return [p for p in self.parameters() if id(p) not in heads]

    def task_features(self, x: Tensor) -> list[Tensor]:
        """The ``k`` attended feature maps ``[B, 64, H, W]`` the heads read."""
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ValueError(f"MTANSegNet needs heights and widths divisible by 32, got {tuple(x.shape[-2:])}.")
        first, stage_out, indices = [], [], []
        h = x
        for conv_first, conv_rest in zip(self.encoder_first, self.encoder_rest):
            a = conv_first(h)
            b = conv_rest(a)
            h, idx = F.max_pool2d(b, 2, 2, return_indices=True)
            first.append(a)
            stage_out.append(b)
            indices.append(idx)
        unpooled, decoded = [], []
        for j, (conv_first, conv_rest) in enumerate(zip(self.decoder_first, self.decoder_rest)):
            up = F.max_unpool2d(h, indices[-1 - j], 2, 2)
            h = conv_rest(conv_first(up))
            unpooled.append(up)
            decoded.append(h)

        features = []
        for enc_masks, dec_masks in zip(self.encoder_masks, self.decoder_masks):
            a = None
            for s, (mask, link) in enumerate(zip(enc_masks, self.encoder_links)):
                gate = mask(first[s] if a is None else torch.cat((first[s], a), dim=1))
                a = F.max_pool2d(link(gate * stage_out[s]), 2, 2)
            for j, (mask, link) in enumerate(zip(dec_masks, self.decoder_links)):
                a = link(F.interpolate(a, scale_factor=2, mode="bilinear", align_corners=True))
                a = mask(torch.cat((unpooled[j], a), dim=1)) * decoded[j]
            features.append(a)
        return features

    def forward(self, x: Tensor) -> list[Tensor]:
        return [head(z) for head, z in zip(self.heads, self.task_features(x))]
