"""Every network of He et al. (2016) as one Flax module.

`ResNet` builds the ImageNet nets of Table 1, the CIFAR-10 nets of Section 4.2 and their plain counterparts from a
few fields. Blocks receive `conv` and `norm` factories (as in flax's examples/imagenet), so precision, initialisation
and BatchNorm grouping are decided once, in `ResNet`. The named nets are explicit entries of `specs.py`;
`resnet_jax.models.create_model` is the entry point other tools use.

Layer names follow torchvision (`conv1`, `bn1`, `layer2_0`, `downsample`, `fc`) so that weights convert by name, and
every convolution pads k//2 on both sides as Caffe and PyTorch do (XLA's 'SAME' pads stride-2 convolutions
asymmetrically, which would shift every feature map by a pixel against the released weights).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.kernels.conv import conv_general_dilated_for, uses_onednn
from resnet_jax.models.batch_norm import GroupedBatchNorm

ModuleDef = Any
Shortcut = Literal["A", "B", "C"]
IMAGENET_SIZE = 224  # the training crop of the ImageNet nets
IMAGENET_STRIDE = 32  # their total stride: one score-map position per 32 x 32 pixels

# He et al. (2015), "Delving deep into rectifiers": zero-mean Gaussian with std sqrt(2 / (k*k*c_in)) (Caffe "msra").
he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def _pad(kernel: int) -> list[tuple[int, int]]:
    return [(kernel // 2, kernel // 2)] * 2


def _keep(y: jax.Array, valid: jax.Array | None) -> jax.Array:
    """`y` with zeros outside the image, for an image on a larger canvas (`valid`: [N, H, W] at the input's
    resolution, True on the image, which sits in the top-left corner; H and W multiples of the net's stride).

    A convolution then sees zeros beyond the image's border, exactly its own zero padding on the image alone, so every
    position on the image computes what a pass over the image alone computes. Applied to every activation that a
    3x3 convolution or a pooling reads.
    """
    if valid is None:
        return y
    stride = valid.shape[1] // y.shape[1]
    return y * valid[:, ::stride, ::stride, None].astype(y.dtype)


class PointwiseConv(nn.Conv):
    """A bias-free, unpadded 1x1 `nn.Conv` (same variables) computed as a matrix product.

    Where XLA computes the convolutions: XLA's CPU backend takes a convolution's kernel gradient only after
    transposing its activations to [C, H, W, N], which cost 20% of the ResNet-50 train step; a `dot_general`
    contracts N*H*W in place (ResNet-50 v1.5, batch 16: 8.06 s -> 5.77 s per step, benchmarks/RESULTS.md). oneDNN's
    1x1 convolutions are faster than both (the net's 1x1 shapes at batch 16, forward and gradients: 0.94 s against
    the products' 1.76 s), so with `conv_impl` on oneDNN they stay convolutions.
    """

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (1, 1, x.shape[-1], self.features), self.param_dtype)
        sh, sw = (self.strides,) * 2 if isinstance(self.strides, int) else self.strides
        x, kernel = nn.dtypes.promote_dtype(x[:, ::sh, ::sw, :], kernel, dtype=self.dtype)
        return jax.lax.dot_general(x, kernel[0, 0], (((x.ndim - 1,), (0,)), ((), ())), precision=self.precision)


def conv_module(
    features: int,
    kernel_size: Sequence[int],
    strides: Sequence[int] = (1, 1),
    *,
    padding: list[tuple[int, int]],
    use_bias: bool,
    conv_impl: str,
    dtype: Any = jnp.float32,
    **kwargs: Any,
) -> nn.Conv:
    """The blocks' convolution factory: an `nn.Conv` computed as `conv_impl` says (`resnet_jax.kernels.conv`), or a
    `PointwiseConv` for a 1x1 convolution that XLA would compute."""
    pointwise = tuple(kernel_size) == (1, 1) and not use_bias and all(tuple(p) == (0, 0) for p in padding)
    if pointwise and not uses_onednn(conv_impl, dtype):
        return PointwiseConv(features, kernel_size, strides, padding=padding, use_bias=use_bias, dtype=dtype, **kwargs)
    return nn.Conv(
        features,
        kernel_size,
        strides,
        padding=padding,
        use_bias=use_bias,
        dtype=dtype,
        conv_general_dilated=conv_general_dilated_for(conv_impl),
        **kwargs,
    )


class ShortcutBranch(nn.Module):
    """The shortcut of one block: identity, option A (zero padding) or a 1x1 projection (options B and C).

    `avg_down` is mmpretrain's v1d downsampling: average-pool 2x2 before a stride-1 projection, so the shortcut sees
    every input pixel rather than one in four.
    """

    features: int
    strides: int
    kind: Literal["identity", "zero_pad", "projection"]
    conv: ModuleDef
    norm: ModuleDef
    avg_down: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, valid: jax.Array | None = None) -> jax.Array:
        if self.kind == "identity":
            return x
        if self.kind == "projection":
            strides = self.strides
            if self.avg_down and self.strides > 1:
                window = (self.strides, self.strides)
                if valid is None:
                    x = nn.avg_pool(x, window, window, padding="SAME", count_include_pad=False)
                else:  # the mean over the window's pixels on the image, as the image alone would give
                    inside = _keep(jnp.ones_like(x[..., :1]), valid)
                    x = nn.avg_pool(x, window, window, padding="SAME") / jnp.maximum(
                        nn.avg_pool(inside, window, window, padding="SAME"), 1e-6
                    )
                strides = 1
            x = self.conv(self.features, (1, 1), (strides, strides), padding=_pad(1), name="conv")(x)
            return self.norm(name="bn")(x)
        # Option A: subsample by striding, then zero-pad the new channels, split evenly before and after the old
        # ones (as the public CIFAR reproduction does, so its weights load unchanged). No parameters.
        x = x[:, :: self.strides, :: self.strides, :]
        extra = self.features - x.shape[-1]
        return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))


class _Block(nn.Module):
    """What every residual (or plain) block is given: its width, stride, layer factories and shortcut."""

    features: int
    strides: int
    conv: ModuleDef
    norm: ModuleDef
    shortcut: ModuleDef | None  # a ShortcutBranch factory; None for plain nets
    zero_init_last: bool = False


class BasicBlock(_Block):
    """Two 3x3 convolutions (ResNet-18/34 and the CIFAR nets)."""

    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array, valid: jax.Array | None = None) -> jax.Array:
        y = self.conv(self.features, (3, 3), (self.strides, self.strides), padding=_pad(3), name="conv1")(x)
        y = _keep(nn.relu(self.norm(name="bn1")(y)), valid)
        y = self.conv(self.features, (3, 3), padding=_pad(3), name="conv2")(y)
        y = self.norm(name="bn2", scale_init=_last_scale_init(self.zero_init_last))(y)
        return _keep(nn.relu(y if self.shortcut is None else y + self.shortcut(name="downsample")(x, valid)), valid)


class BottleneckBlock(_Block):
    """1x1 reduce, 3x3, 1x1 expand (ResNet-50/101/152).

    `stride_on_3x3` False is the authors' release ("v1": the stride sits on the first 1x1); True is torchvision's
    and NVIDIA's "v1.5" (about +0.5% top-1 and 5% more multiply-adds).
    """

    stride_on_3x3: bool = False
    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array, valid: jax.Array | None = None) -> jax.Array:
        s1, s3 = (1, self.strides) if self.stride_on_3x3 else (self.strides, 1)
        y = self.conv(self.features, (1, 1), (s1, s1), padding=_pad(1), name="conv1")(x)
        y = _keep(nn.relu(self.norm(name="bn1")(y)), valid)
        y = self.conv(self.features, (3, 3), (s3, s3), padding=_pad(3), name="conv2")(y)
        y = nn.relu(self.norm(name="bn2")(y))
        y = self.conv(self.features * 4, (1, 1), padding=_pad(1), name="conv3")(y)
        y = self.norm(name="bn3", scale_init=_last_scale_init(self.zero_init_last))(y)
        return _keep(nn.relu(y if self.shortcut is None else y + self.shortcut(name="downsample")(x, valid)), valid)


def _last_scale_init(zero: bool) -> Callable:
    return nn.initializers.zeros if zero else nn.initializers.ones


class ResNet(nn.Module):
    """A residual or plain network of He et al. (2016).

    Attributes:
      stage_sizes: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50 or (3, 3, 3) for CIFAR ResNet-20.
      block_cls: `BasicBlock` or `BottleneckBlock`.
      num_classes: width of the final fully-connected layer.
      widths: base width of each stage (bottleneck outputs are 4x this).
      stem: 'imagenet' (7x7/2 conv + 3x3/2 max pool), 'cifar' (3x3 conv, 16 filters) or 'deep' (mmpretrain v1d:
        three 3x3 convs + max pool).
      shortcut: 'A' zero-padding identity, 'B' projection where the shape changes, 'C' projection everywhere.
      residual: False gives the plain net of the same depth (no shortcuts at all).
      stride_on_3x3: bottleneck stride placement; False is v1 (the paper's release), True v1.5.
      avg_down: v1d's average-pool downsampling in projection shortcuts.
      zero_init_last_bn: start each residual branch at zero (Goyal et al. 2017); off in the paper.
      bn_group_size: BatchNorm statistics per group of this many examples ("ghost" batches) during training, to
        reproduce the paper's per-GPU BN (32 per GPU on ImageNet) whatever the device count; None uses the whole
        (global) batch, i.e. cross-device BN.
      bn_momentum: decay of the BN moving averages.
      bn_unbiased_var: the moving variance averages the unbiased batch variance (n / (n - 1) times the biased one
        that training normalises with), as Caffe (the authors' framework) and PyTorch do; False is Flax's BatchNorm.
        The paper's configs set it.
      dtype: computation dtype (e.g. bfloat16); parameters and BN statistics stay float32.
      remat: recompute each block's activations in the backward pass instead of storing them (`nn.remat`), trading
        about one extra forward pass for memory, for the deepest nets (ResNet-152, CIFAR ResNet-1202).
      conv_impl: how the convolutions are computed: 'auto' (oneDNN's kernels for a single-device program on XLA:CPU
        where oneDNN loads, XLA's everywhere else), 'xla' or 'onednn' (`resnet_jax.kernels.conv`). The same
        variables and, within float32 rounding, the same results.
      bn_impl: how training's batch norms are computed, with the same values and rule (`resnet_jax.kernels.
        batch_norm`).
    """

    stage_sizes: Sequence[int]
    block_cls: ModuleDef
    num_classes: int
    widths: Sequence[int] = (64, 128, 256, 512)
    stem: Literal["imagenet", "cifar", "deep"] = "imagenet"
    shortcut: Shortcut = "B"
    residual: bool = True
    stride_on_3x3: bool = False
    avg_down: bool = False
    zero_init_last_bn: bool = False
    bn_group_size: int | None = None
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    bn_unbiased_var: bool = False
    dtype: Any = jnp.float32
    remat: bool = False
    conv_impl: str = "auto"
    bn_impl: str = "auto"

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        train: bool = False,
        features: bool = False,
        score_map: bool = False,
        valid: jax.Array | None = None,
    ) -> jax.Array | dict[str, jax.Array] | tuple[jax.Array, jax.Array]:
        """Returns logits [N, num_classes]; with `features=True` the stage outputs {'C2': .., 'C5': ..} (CIFAR nets
        have three stages, C2..C4).

        With `score_map=True`, the fully-convolutional form of the paper's multi-scale testing (ImageNet nets): the
        global average pool becomes a 7x7 average pool with stride 1 and the fully-connected layer a 1x1 convolution
        with the same weights, giving class scores (logits) at every position: `(scores [N, h, w, num_classes],
        positions [N, h, w] bool)`. At 224x224 the map is 1x1 and equals the logits. `valid` ([N, H, W] bool) says
        which pixels of a canvas hold the image (top-left; H and W multiples of 32): every layer then sees zeros
        outside it, so the scores at `positions` are those of a pass over the image alone.
        """
        if valid is not None and not score_map:
            raise ValueError("valid (an image on a canvas) goes with score_map=True.")
        conv = functools.partial(
            conv_module,
            use_bias=False,
            dtype=self.dtype,
            kernel_init=he_normal,
            conv_impl=self.conv_impl,
        )
        norm = functools.partial(
            GroupedBatchNorm,
            use_running_average=not train,
            group_size=self.bn_group_size,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            unbiased_running_var=self.bn_unbiased_var,
            dtype=self.dtype,
            impl=self.bn_impl,
        )
        x = self._stem(_keep(x.astype(self.dtype), valid), conv, norm, valid)

        stages = {}
        in_features = x.shape[-1]
        block_cls = nn.remat(self.block_cls) if self.remat else self.block_cls
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                strides = 2 if i > 0 and j == 0 else 1
                out_features = self.widths[i] * self.block_cls.expansion
                block_kwargs = {"stride_on_3x3": self.stride_on_3x3} if self.block_cls is BottleneckBlock else {}
                x = block_cls(
                    features=self.widths[i],
                    strides=strides,
                    conv=conv,
                    norm=norm,
                    shortcut=self._shortcut(in_features, out_features, strides, conv, norm),
                    zero_init_last=self.zero_init_last_bn,
                    name=f"layer{i + 1}_{j}",
                    **block_kwargs,
                )(x, valid)
                in_features = out_features
            stages[f"C{i + 2}"] = x
        if features:
            return stages
        fc = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")
        if not score_map:
            return fc(jnp.mean(x, axis=(1, 2))).astype(jnp.float32)
        if self.stem == "cifar":
            raise ValueError("score_map is the fully-convolutional ImageNet protocol; this net has a CIFAR stem.")
        stride = 4 * 2 ** (len(self.stage_sizes) - 1)  # the stem's 4, then 2 per stage after the first: 32
        window = IMAGENET_SIZE // stride  # the map a 224x224 training image leaves: 7x7
        scores = fc(nn.avg_pool(x, (window, window), (1, 1), padding="VALID")).astype(jnp.float32)
        if valid is None:
            return scores, jnp.ones(scores.shape[:3], bool)
        # A window is on the image when its last position is: the image is a top-left rectangle of the map.
        on_image = valid[:, :: valid.shape[1] // x.shape[1], :: valid.shape[2] // x.shape[2]]
        return scores, on_image[:, window - 1 :, window - 1 :]

    def _stem(self, x: jax.Array, conv: ModuleDef, norm: ModuleDef, valid: jax.Array | None) -> jax.Array:
        if self.stem == "cifar":
            return _keep(
                nn.relu(norm(name="bn1")(conv(self.widths[0], (3, 3), padding=_pad(3), name="conv1")(x))), valid
            )
        if self.stem == "imagenet":
            x = nn.relu(norm(name="bn1")(conv(self.widths[0], (7, 7), (2, 2), padding=_pad(7), name="conv1")(x)))
            x = _keep(x, valid)
        else:  # deep
            for k, (width, strides) in enumerate(
                ((self.widths[0] // 2, 2), (self.widths[0] // 2, 1), (self.widths[0], 1))
            ):
                x = conv(width, (3, 3), (strides, strides), padding=_pad(3), name=f"stem_conv{k + 1}")(x)
                x = _keep(nn.relu(norm(name=f"stem_bn{k + 1}")(x)), valid)
        # After a ReLU every value is >= 0, so zeros beyond the border change no maximum: as the image's own -inf.
        return _keep(nn.max_pool(x, (3, 3), (2, 2), padding=_pad(3)), valid)

    def _shortcut(
        self, in_features: int, out_features: int, strides: int, conv: ModuleDef, norm: ModuleDef
    ) -> ModuleDef | None:
        if not self.residual:
            return None
        if strides == 1 and in_features == out_features:
            kind = "projection" if self.shortcut == "C" else "identity"
        else:
            kind = "zero_pad" if self.shortcut == "A" else "projection"
        return functools.partial(
            ShortcutBranch,
            features=out_features,
            strides=strides,
            kind=kind,
            conv=conv,
            norm=norm,
            avg_down=self.avg_down,
        )
