"""Which observations are images, and the convolutional encoders that read them.

The policy reads one flat row per agent (the vector-env contract); an emulated env flattens its
structured observation space into that row (shoal.emulation.ObsFlattener). To read pixels the
policy needs that structured space: this module finds the image in it (a uint8 Box of rank 3,
``HxWxC`` or ``CxHxW``) and where the image's columns lie in the row, and chooses the encoder
that ``policy.encoder`` asks for:

- "mlp": every observation number through the MLP (what Shoal always did);
- "nature": the Nature DQN CNN (Mnih et al. 2015): conv 32 8x8/4, 64 4x4/2, 64 3x3/1, linear;
- "impala": the IMPALA ResNet (Espeholt et al. 2018): 3 stacks of [conv 3x3, max-pool 3x3/2,
  2 residual blocks] with 16/32/32 channels, linear; it reads frames of any size;
- "auto": "nature" for an image (or "impala" when the frame is smaller than the Nature CNN's
  36x36 minimum), "mlp" otherwise.

Next to the image, the rest of a Dict (or Tuple) observation goes through a small MLP and the
two feature vectors are joined by one linear layer (:class:`ConvEncoder`). Errors are worded in
terms of the user's observation space and config keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import gymnasium
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shoal.core.config import ConfigError
from shoal.emulation import ObsFlattener

ENCODERS = ("auto", "mlp", "nature", "impala")
CNN_ENCODERS = ("nature", "impala")
# An image's channel dimension is small (grey, RGB, RGBA, a few stacked frames); its sides are not.
MAX_CHANNELS = 16
MIN_SIDE = 8
# The Nature CNN's 8x8/4, 4x4/2 and 3x3/1 convolutions need at least this many pixels per side.
NATURE_MIN_SIDE = 36
# Width of the small MLP that reads the vector part of a Dict observation next to an image.
VECTOR_WIDTH = 64
IMPALA_CHANNELS = (16, 32, 32)
RELU_GAIN = math.sqrt(2)

Layout = Literal["HWC", "CHW"]


def image_layout(shape: tuple[int, ...]) -> Layout | None:
    """"HWC" or "CHW" for the shape of an image (rank 3, a channel dimension of at most
    MAX_CHANNELS at one end, sides of at least MIN_SIDE), else None.

    When both ends could hold the channels (8x8x8, 16x16x3) it is HWC: the CxHxW reading would
    need the last dimension, a side, to be larger than any channel count.
    """
    if len(shape) != 3 or min(shape) < 1:
        return None
    if shape[-1] <= MAX_CHANNELS and min(shape[0], shape[1]) >= MIN_SIDE:
        return "HWC"
    if shape[0] <= MAX_CHANNELS and min(shape[1], shape[2]) >= MIN_SIDE:
        return "CHW"
    return None


@dataclass(frozen=True)
class ImagePart:
    """An image leaf of the observation space and where its columns lie in the flat row."""

    path: str  # where it sits in the observation space, for messages ("observation['pixels']")
    space: gymnasium.spaces.Box
    offset: int
    layout: Layout

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.space.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def chw(self) -> tuple[int, int, int]:
        """(channels, height, width)."""
        s = self.shape
        return (s[2], s[0], s[1]) if self.layout == "HWC" else (s[0], s[1], s[2])


@dataclass(frozen=True)
class EncoderChoice:
    """The encoder a policy builds: its name, the image it reads (CNNs) and the flat-row columns
    of everything else (read by the MLP next to the CNN)."""

    name: str
    image: ImagePart | None = None
    vector_columns: tuple[int, ...] = ()


def nature_fits(height: int, width: int) -> bool:
    """Whether the Nature CNN's convolutions leave at least one pixel of a height x width frame."""
    return min(height, width) >= NATURE_MIN_SIDE


def _describe(path: str, space: gymnasium.Space) -> str:
    path = "the observation" if path == "observation" else path
    if isinstance(space, gymnasium.spaces.Box):
        return f"{path} is a {space.dtype} Box of shape {tuple(space.shape)}"
    return f"{path} is {space}"


def choose_encoder(
    requested: str, structured_space: gymnasium.Space, obs_size: int, obs_norm: bool = False
) -> EncoderChoice:
    """The encoder `requested` (policy.encoder) resolves to for observations of
    `structured_space`, whose flattened rows hold `obs_size` numbers; ConfigError when it cannot
    read them."""
    if requested not in ENCODERS:
        choices = ", ".join(map(repr, ENCODERS))
        raise ConfigError(f"policy.encoder must be one of {choices}, got {requested!r}")
    if requested == "mlp":
        return EncoderChoice("mlp")
    flattener = ObsFlattener(structured_space)
    if flattener.size != obs_size:
        raise ValueError(
            f"the structured observation space {structured_space} flattens to {flattener.size} numbers, "
            f"but the policy's observation rows hold {obs_size}"
        )
    blocks = flattener.leaf_blocks()
    shaped = [
        (path, space, block)
        for path, space, block in blocks
        if isinstance(space, gymnasium.spaces.Box) and image_layout(tuple(space.shape)) is not None
    ]
    images = [part for part in shaped if part[1].dtype == np.uint8]
    if requested == "auto" and len(images) != 1:
        # No image, or several (the CNN reads one): everything through the MLP, as before.
        return EncoderChoice("mlp")
    if requested != "auto":
        _check_cnn_input(requested, structured_space, images, shaped)
    path, space, block = images[0]
    image = ImagePart(path, space, block.start, image_layout(tuple(space.shape)))
    columns = tuple(i for p, _, b in blocks if p != path for i in range(b.start, b.stop))
    if obs_norm and not columns:
        raise ConfigError(
            "policy.obs_norm standardizes vector features; image observations are scaled by the policy "
            f"(to [0, 1] by their bounds): {_describe(image.path, image.space)}, so set "
            "policy.obs_norm = false"
        )
    return EncoderChoice(_cnn_name(requested, image), image, columns)


def _cnn_name(requested: str, image: ImagePart) -> str:
    """The CNN for `image`: "auto" takes the Nature CNN where the frame is large enough for it."""
    fits = nature_fits(*image.chw[1:])
    if requested == "auto":
        return "nature" if fits else "impala"
    if requested == "nature" and not fits:
        raise ConfigError(
            f"policy.encoder = 'nature' needs frames of at least {NATURE_MIN_SIDE}x{NATURE_MIN_SIDE} (its "
            "8x8 stride-4, 4x4 stride-2 and 3x3 convolutions leave nothing of a smaller one), but "
            f"{_describe(image.path, image.space)} ({image.layout}): use policy.encoder = 'impala', "
            "which reads frames of any size, or render bigger frames"
        )
    return requested


def _check_cnn_input(
    requested: str,
    structured_space: gymnasium.Space,
    images: list[tuple[str, gymnasium.Space, slice]],
    shaped: list[tuple[str, gymnasium.Space, slice]],
) -> None:
    """ConfigError when a CNN encoder was asked for observations without exactly one uint8 image."""
    wanted = (
        f"policy.encoder = {requested!r} reads one uint8 image: a Box of dtype uint8 and shape HxWxC or "
        f"CxHxW (C <= {MAX_CHANNELS}, H and W >= {MIN_SIDE}), alone or in a Dict next to vector parts"
    )
    if len(images) > 1:
        paths = ", ".join(f"{p} {tuple(s.shape)}" for p, s, _ in images)
        raise ConfigError(f"{wanted}; the observation space holds {len(images)} images ({paths})")
    if images:
        return
    if shaped:
        path, space, _ = shaped[0]
        raise ConfigError(
            f"{wanted}; {_describe(path, space)}: give the frames as uint8 pixels (0-255, e.g. with a "
            "gymnasium ObservationWrapper) or use policy.encoder = 'mlp'"
        )
    raise ConfigError(
        f"{wanted}; {_describe('observation', structured_space)}, which has no image: "
        "use policy.encoder = 'mlp' or 'auto'"
    )


# ---- the networks ----


def _init(layer: nn.Conv2d | nn.Linear) -> None:
    # Orthogonal with the ReLU gain, as the MLP's layers: activations keep their size layer by layer.
    nn.init.orthogonal_(layer.weight, RELU_GAIN)
    nn.init.zeros_(layer.bias)


class NatureCNN(nn.Module):
    """Mnih et al. (2015): conv 32 8x8/4, conv 64 4x4/2, conv 64 3x3/1, linear to `hidden_size`,
    ReLU after each. ``input`` is the first convolution (the layer that reads pixels)."""

    input_prefixes = ("input.",)

    def __init__(self, channels: int, height: int, width: int, hidden_size: int) -> None:
        super().__init__()
        self.input = nn.Conv2d(channels, 32, 8, stride=4)
        self.convs = nn.ModuleList([nn.Conv2d(32, 64, 4, stride=2), nn.Conv2d(64, 64, 3, stride=1)])
        h, w = height, width
        for kernel, stride in ((8, 4), (4, 2), (3, 1)):
            h, w = (h - kernel) // stride + 1, (w - kernel) // stride + 1
        self.fc = nn.Linear(64 * h * w, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.input(x))
        for conv in self.convs:
            x = F.relu(conv(x))
        return F.relu(self.fc(x.flatten(1)))


class ResidualBlock(nn.Module):
    """x + conv(relu(conv(relu(x)))), 3x3 convolutions that keep the channels and the size."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(F.relu(self.conv0(F.relu(x))))


class ImpalaStack(nn.Module):
    """conv 3x3, max-pool 3x3 stride 2 (halves the sides, rounding up), two residual blocks."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.blocks = nn.ModuleList([ResidualBlock(channels), ResidualBlock(channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.conv(x), 3, stride=2, padding=1)
        for block in self.blocks:
            x = block(x)
        return x


class ImpalaCNN(nn.Module):
    """Espeholt et al. (2018): 3 stacks (16, 32, 32 channels), ReLU, linear to `hidden_size`,
    ReLU. The first stack's convolution reads the pixels."""

    input_prefixes = ("stacks.0.conv.",)

    def __init__(self, channels: int, height: int, width: int, hidden_size: int) -> None:
        super().__init__()
        stacks, h, w = [], height, width
        for out in IMPALA_CHANNELS:
            stacks.append(ImpalaStack(channels, out))
            channels, h, w = out, (h + 1) // 2, (w + 1) // 2
        self.stacks = nn.ModuleList(stacks)
        self.fc = nn.Linear(channels * h * w, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stack in self.stacks:
            x = stack(x)
        return F.relu(self.fc(F.relu(x).flatten(1)))


CNNS: dict[str, type[nn.Module]] = {"nature": NatureCNN, "impala": ImpalaCNN}


class ConvEncoder(nn.Module):
    """Flat observation rows ``[N, obs_size]`` -> features ``[N, hidden_size]`` through a CNN.

    The image's columns are viewed (not copied) as ``[N, C, H, W]``: an HxWxC image becomes a
    channels-last tensor, which the convolutions read as it is. It stays in its own dtype until
    here and is scaled to [0, 1] by its bounds (255 for pixels). `vector`, given for a Dict
    observation, is an MLP encoder (shoal.policy.Encoder) of the other columns; its features and
    the CNN's are joined by one linear layer, ``fuse``.
    """

    def __init__(
        self,
        choice: EncoderChoice,
        hidden_size: int,
        image_scale: float,
        vector: nn.Module | None = None,
        vector_width: int = VECTOR_WIDTH,
    ) -> None:
        super().__init__()
        image = choice.image
        if image is None or choice.name not in CNNS:
            raise ValueError(f"ConvEncoder needs a CNN choice with an image, got {choice}")
        self.offset, self.size, self.shape, self.layout = image.offset, image.size, image.shape, image.layout
        self.image_scale = image_scale
        self.cnn = CNNS[choice.name](*image.chw, hidden_size)
        self.vector = vector
        if vector is not None:
            # Not saved: the layout follows from the observation space, which checkpoints keep.
            columns = torch.as_tensor(choice.vector_columns, dtype=torch.long)
            self.register_buffer("vector_columns", columns, persistent=False)
            self.fuse = nn.Linear(hidden_size + vector_width, hidden_size)
        else:
            self.fuse = None

    @property
    def input_prefixes(self) -> tuple[str, ...]:
        """Names (relative to this module) of the layers that read observations."""
        names = tuple(f"cnn.{p}" for p in self.cnn.input_prefixes)
        return names + (("vector.input.",) if self.vector is not None else ())

    def init_weights(self) -> None:
        for module in self.cnn.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                _init(module)
        if self.vector is not None:
            self.vector.init_weights()
            _init(self.fuse)

    def frames(self, obs: torch.Tensor) -> torch.Tensor:
        """The image of each row ``[N, obs_size]`` as ``[N, C, H, W]``: a view of the rows."""
        x = obs[:, self.offset : self.offset + self.size].reshape(obs.shape[0], *self.shape)
        return x.permute(0, 3, 1, 2) if self.layout == "HWC" else x

    def images(self, obs: torch.Tensor) -> torch.Tensor:
        """The frames of the rows, scaled, in the dtype the convolutions run in."""
        x = self.frames(obs)
        device = obs.device.type
        # Under autocast straight to its dtype: a float32 copy of a batch of frames would be
        # twice as large and cast again by the first convolution.
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
        else:
            dtype = self.cnn.fc.weight.dtype
        return x.to(dtype) * self.image_scale

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        features = self.cnn(self.images(obs))
        if self.vector is None:
            return features
        vector = self.vector(obs.index_select(1, self.vector_columns))
        return F.relu(self.fuse(torch.cat([features, vector.to(features.dtype)], dim=1)))

    def update_obs_stats(self, obs: torch.Tensor, combine: object = None) -> None:
        """policy.obs_norm: the statistics of the vector part (the image is scaled, not standardized)."""
        if self.vector is not None:
            self.vector.update_obs_stats(obs.index_select(-1, self.vector_columns), combine)
