"""BigGAN (Brock et al., 2018) at 32 x 32: the CIFAR-size architecture of the paper, narrowed.

Ingredients kept: residual up/down blocks; a shared class embedding whose output, with a chunk
of the latent (the hierarchical latent), gives every conditional BatchNorm its gain and bias;
a projection discriminator; spectral norm in G and D; the hinge loss; orthogonal
regularisation of G; self-attention at 16 x 16; an EMA of G's weights; and the truncation trick,
applied by whoever draws the latents (the manifest names it). Shapes are ``channels x height x
width`` per sample.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations, parametrize

from service.manifest import TruncationSpec
from training.families import Batch, Family, StepState

if TYPE_CHECKING:
    from training.loop import TrainConfig

FAMILY = "biggan"
PAPER = (
    "Brock, Donahue, Simonyan. Large Scale GAN Training for High Fidelity Natural Image "
    "Synthesis (ICLR 2019), arXiv:1809.11096"
)
# The truncation trick as served: seeds' latent values beyond the threshold are redrawn.
TRUNCATION = TruncationSpec(kind="resample", threshold=2.0)


@dataclass
class BigGANConfig:
    image_size: int = 32  # S: three 2x up-blocks from 4 x 4
    channels: int = 1  # C
    nz: int = 128  # latent size, split into (blocks + 1) chunks
    num_classes: int = 10  # 0: unconditional (no shared embedding, no projection)
    shared_dim: int = 64  # the shared class embedding
    g_widths: tuple[int, ...] = (128, 64, 32, 32)  # at 4, 8, 16, 32
    d_widths: tuple[int, ...] = (32, 64, 128, 128)  # after each D block: 16, 8, 4, 4
    attention_at: int = 16  # resolution of the self-attention block in G and D

    def __post_init__(self) -> None:
        self.g_widths = tuple(self.g_widths)
        self.d_widths = tuple(self.d_widths)
        if 4 * 2 ** (len(self.g_widths) - 1) != self.image_size:
            raise ValueError(f"g_widths does not reach image_size {self.image_size}")
        if self.nz < len(self.g_widths):
            raise ValueError(f"nz must be at least {len(self.g_widths)}, one value per chunk")

    @property
    def z_chunks(self) -> list[int]:
        """Chunk sizes of the hierarchical latent: as equal as possible, the first ones larger."""
        k, extra = divmod(self.nz, len(self.g_widths))
        return [k + (i < extra) for i in range(len(self.g_widths))]

    def to_dict(self) -> dict:
        return {**asdict(self), "g_widths": list(self.g_widths), "d_widths": list(self.d_widths)}


def sn(module: nn.Module) -> nn.Module:
    """Spectral normalisation (Miyato et al., 2018): one power iteration per training call."""
    return parametrizations.spectral_norm(module, eps=1e-6)


def sn_conv(cin: int, cout: int, kernel: int) -> nn.Module:
    return sn(nn.Conv2d(cin, cout, kernel, padding=kernel // 2))


class ConditionalBatchNorm(nn.Module):
    """BatchNorm without its own affine; gain (1 + .) and bias come from the condition vector.

    In eval mode the running statistics are applied by hand, so the exported graph holds a
    plain multiply-add instead of a BatchNormalization node.
    """

    def __init__(self, features: int, cond_dim: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(features, affine=False, eps=1e-4)
        self.gain = sn(nn.Linear(cond_dim, features, bias=False))
        self.bias = sn(nn.Linear(cond_dim, features, bias=False))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if self.training:
            x = self.bn(x)
        else:
            scale = torch.rsqrt(self.bn.running_var + self.bn.eps)
            x = (x - self.bn.running_mean[None, :, None, None]) * scale[None, :, None, None]
        gain = 1.0 + self.gain(cond)[:, :, None, None]
        return x * gain + self.bias(cond)[:, :, None, None]


class SelfAttention(nn.Module):
    """SAGAN attention (Zhang et al., 2018) as in BigGAN: keys/values max-pooled, gamma from 0."""

    def __init__(self, ch: int):
        super().__init__()
        self.theta = sn(nn.Conv2d(ch, ch // 8, 1, bias=False))
        self.phi = sn(nn.Conv2d(ch, ch // 8, 1, bias=False))
        self.g = sn(nn.Conv2d(ch, ch // 2, 1, bias=False))
        self.o = sn(nn.Conv2d(ch // 2, ch, 1, bias=False))
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        theta = self.theta(x).flatten(2)  # c/8 x hw
        phi = F.max_pool2d(self.phi(x), 2).flatten(2)  # c/8 x hw/4
        g = F.max_pool2d(self.g(x), 2).flatten(2)  # c/2 x hw/4
        attn = torch.softmax(torch.bmm(theta.transpose(1, 2), phi), dim=-1)  # hw x hw/4
        o = torch.bmm(g, attn.transpose(1, 2)).view(n, c // 2, h, w)  # c/2 x h x w
        return x + self.gamma * self.o(o)  # c x h x w


class GBlock(nn.Module):
    """CBN-ReLU-up-conv-CBN-ReLU-conv, plus an upsampled 1x1 shortcut: cin x r -> cout x 2r."""

    def __init__(self, cin: int, cout: int, cond_dim: int):
        super().__init__()
        self.bn1 = ConditionalBatchNorm(cin, cond_dim)
        self.conv1 = sn_conv(cin, cout, 3)
        self.bn2 = ConditionalBatchNorm(cout, cond_dim)
        self.conv2 = sn_conv(cout, cout, 3)
        self.shortcut = sn_conv(cin, cout, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, cond)), scale_factor=2.0)  # cin x 2r x 2r
        h = self.conv1(h)  # cout x 2r x 2r
        h = self.conv2(F.relu(self.bn2(h, cond)))  # cout x 2r x 2r
        return h + self.shortcut(F.interpolate(x, scale_factor=2.0))  # cout x 2r x 2r


class DBlock(nn.Module):
    """ReLU-conv-ReLU-conv-(avgpool), plus a 1x1 (pooled) shortcut: cin x r -> cout x r(/2)."""

    def __init__(self, cin: int, cout: int, down: bool, preactivation: bool = True):
        super().__init__()
        self.conv1 = sn_conv(cin, cout, 3)
        self.conv2 = sn_conv(cout, cout, 3)
        self.shortcut = sn_conv(cin, cout, 1) if cin != cout or down else None
        self.down, self.preactivation = down, preactivation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(x) if self.preactivation else x
        h = self.conv2(F.relu(self.conv1(h)))  # cout x r x r
        if self.down:
            h = F.avg_pool2d(h, 2)  # cout x r/2 x r/2
        s = x
        if self.shortcut is not None:
            if self.preactivation:
                s = self.shortcut(s)
                s = F.avg_pool2d(s, 2) if self.down else s
            else:  # the first block: pool, then 1x1 conv, as in the paper's code
                s = self.shortcut(F.avg_pool2d(s, 2) if self.down else s)
        return h + s


class Generator(nn.Module):
    """z [N, nz] + label [N] -> image [N, C, S, S] in [-1, 1].

    Hierarchical latent: z splits into (blocks + 1) chunks; the first feeds the 4 x 4 linear
    layer, each later chunk joins the shared class embedding as the condition of one block's
    two conditional BatchNorms.
    """

    def __init__(self, cfg: BigGANConfig):
        super().__init__()
        self.cfg = cfg
        w, k = cfg.g_widths, cfg.z_chunks
        shared = cfg.shared_dim if cfg.num_classes else 0
        if cfg.num_classes:
            self.shared = nn.Embedding(cfg.num_classes, shared)  # shared class embedding
        self.linear = sn(nn.Linear(k[0], w[0] * 16))  # chunk 0 -> w0 x 4 x 4
        self.blocks = nn.ModuleList(
            GBlock(w[i], w[i + 1], shared + k[i + 1]) for i in range(len(w) - 1)
        )  # w_i x r -> w_{i+1} x 2r
        res = [8 * 2**i for i in range(len(w) - 1)]  # output resolution of each block
        self.attention = nn.ModuleDict(
            {str(i): SelfAttention(w[i + 1]) for i, r in enumerate(res) if r == cfg.attention_at}
        )
        self.out_bn = nn.BatchNorm2d(w[-1], eps=1e-4)
        self.out_conv = sn_conv(w[-1], cfg.channels, 3)  # C x S x S

    def forward(self, z: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        chunks = torch.split(z, self.cfg.z_chunks, dim=1)
        y = None
        if self.cfg.num_classes:
            if label is None:
                raise ValueError("a conditional generator needs labels")
            y = self.shared(label)  # shared_dim: one lookup, shared by every block
        x = self.linear(chunks[0]).view(-1, self.cfg.g_widths[0], 4, 4)  # w0 x 4 x 4
        for i, block in enumerate(self.blocks):
            cond = chunks[i + 1] if y is None else torch.cat([y, chunks[i + 1]], dim=1)
            x = block(x, cond)  # w_{i+1} x 2r x 2r
            if str(i) in self.attention:
                x = self.attention[str(i)](x)
        x = F.relu(self.out_bn(x))
        return torch.tanh(self.out_conv(x))  # C x S x S

    def for_export(self) -> nn.Module:
        """An eval-mode copy with spectral norm baked into plain weights and the output
        BatchNorm applied by hand, so the graph holds neither power iterations nor BN nodes."""
        g = Generator(self.cfg).eval()  # fresh parametrized classes: removal can't touch self's
        g.load_state_dict(self.state_dict())
        for module in list(g.modules()):
            if parametrize.is_parametrized(module):
                for name in list(module.parametrizations.keys()):
                    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
        bn = g.out_bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        g.out_bn = _Affine(scale.detach(), shift.detach())
        return g


class _Affine(nn.Module):
    """Per-channel ``x * scale + shift``: a BatchNorm in eval mode, written out."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", scale[None, :, None, None])
        self.register_buffer("shift", shift[None, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class Discriminator(nn.Module):
    """image [N, C, S, S] + label [N] -> one hinge score per image [N], with the projection term
    ``<embed(label), h>`` on the pooled features h (Miyato & Koyama, 2018)."""

    def __init__(self, cfg: BigGANConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.d_widths
        blocks, cin, res = [], cfg.channels, cfg.image_size
        self.attention_after = -1
        for i, cout in enumerate(w):
            down = res > 4
            blocks.append(DBlock(cin, cout, down=down, preactivation=i > 0))
            res = res // 2 if down else res
            cin = cout
            if res == cfg.attention_at and self.attention_after < 0:
                self.attention_after = i
        self.blocks = nn.ModuleList(blocks)  # C x 32 -> w0 x 16 -> w1 x 8 -> w2 x 4 -> w3 x 4
        self.attention = (
            SelfAttention(w[self.attention_after]) if self.attention_after >= 0 else None
        )
        self.linear = sn(nn.Linear(w[-1], 1))
        if cfg.num_classes:
            self.embed = sn(nn.Embedding(cfg.num_classes, w[-1]))

    def forward(self, image: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        x = image
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == self.attention_after and self.attention is not None:
                x = self.attention(x)  # at 16 x 16
        h = F.relu(x).sum(dim=(2, 3))  # global sum pooling: w_last
        score = self.linear(h).view(-1)
        if not self.cfg.num_classes:
            return score
        if label is None:
            raise ValueError("a conditional discriminator needs labels")
        return score + (self.embed(label) * h).sum(dim=1)  # the projection term


def _raw_weight(m: nn.Module) -> torch.Tensor:
    """The trained weight: before spectral normalisation when the layer has it."""
    return m.parametrizations.weight.original if parametrize.is_parametrized(m) else m.weight


def init_weights(module: nn.Module) -> None:
    """Orthogonal initialisation, as in the paper, for every conv, linear and embedding."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)):
            weight = (
                m.parametrizations.weight.original if parametrize.is_parametrized(m) else m.weight
            )
            nn.init.orthogonal_(weight)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)


def build_models(cfg: BigGANConfig) -> tuple[Generator, Discriminator]:
    g, d = Generator(cfg), Discriminator(cfg)
    init_weights(g)
    init_weights(d)
    return g, d


# --- losses and regularisers -------------------------------------------------------------


def hinge_d_loss(score_real: torch.Tensor, score_fake: torch.Tensor) -> torch.Tensor:
    """E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))]."""
    return F.relu(1.0 - score_real).mean() + F.relu(1.0 + score_fake).mean()


def hinge_g_loss(score_fake: torch.Tensor) -> torch.Tensor:
    return -score_fake.mean()


def orthogonal_penalty(weight: torch.Tensor) -> torch.Tensor:
    """The paper's relaxed orthogonal regulariser ||W W^T * (1 - I)||_F^2 on W [out, in...]:
    only the filters' cosine similarities are penalised, not their norms."""
    w = weight.flatten(1)  # out x in*k*k
    gram = w @ w.t()
    off_diagonal = gram * (1.0 - torch.eye(w.shape[0], device=w.device, dtype=w.dtype))
    return (off_diagonal**2).sum()


def orthogonal_regularisation(g: nn.Module) -> torch.Tensor:
    """Sum of :func:`orthogonal_penalty` over G's conv and linear weights (not embeddings,
    nor the 1-row gains), as the paper applies it."""
    total = torch.zeros(())
    for m in g.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            weight = (
                m.parametrizations.weight.original if parametrize.is_parametrized(m) else m.weight
            )
            if weight.shape[0] > 1:
                total = total + orthogonal_penalty(weight)
    return total


def spectral_norm_estimate(module: nn.Module) -> torch.Tensor:
    """sigma estimated by a spectral-normalised layer: ||W|| / ||W_sn|| (its current u, v)."""
    original = module.parametrizations.weight.original
    with torch.no_grad():
        return original.flatten(1).norm() / module.weight.flatten(1).norm()


# --- the family ------------------------------------------------------------------------


class BigGAN(Family):
    """BigGAN in the shared loop: hinge loss, and the orthogonal regulariser added to G's loss
    (its gradient is the paper's update). Fakes take the real batch's labels.

    Widths come from the run's ``ngf`` / ``ndf``: at 32 x 32, G 8f, 4f, 2f, f at 4, 8, 16, 32
    and D f, 2f, 4f, 4f. ``nz`` must split into one chunk per G stage (four at 32 x 32).
    """

    name = FAMILY
    paper = PAPER
    description = "BigGAN generator"
    truncation = TRUNCATION

    def __init__(self, ortho_weight: float = 1e-4):
        self.ortho_weight = ortho_weight

    def model_config(self, train_cfg: TrainConfig, channels: int, num_classes: int) -> BigGANConfig:
        stages = int(math.log2(train_cfg.image_size)) - 1  # 4 x 4 and each 2x up-block
        f, h = train_cfg.ngf, train_cfg.ndf
        return BigGANConfig(
            image_size=train_cfg.image_size,
            channels=channels,
            nz=train_cfg.nz,
            num_classes=num_classes,
            g_widths=tuple(f * 2 ** (stages - 1 - i) for i in range(stages)),
            d_widths=tuple(h * min(2**i, 4) for i in range(stages)),
        )

    def config_from_dict(self, data: dict[str, Any]) -> BigGANConfig:
        return BigGANConfig(**data)

    def build(self, cfg: BigGANConfig) -> tuple[nn.Module, nn.Module]:
        return build_models(cfg)

    def new_generator(self, cfg: BigGANConfig) -> nn.Module:
        return Generator(cfg)

    def d_loss(
        self, g: nn.Module, d: nn.Module, batch: Batch, train_cfg: TrainConfig
    ) -> tuple[torch.Tensor, StepState]:
        fake = g(batch.z, batch.labels)  # C x S x S
        score_real = d(batch.real, batch.labels)
        score_fake = d(fake.detach(), batch.labels)
        stats = {"score_real": score_real.detach().mean(), "score_fake": score_fake.detach().mean()}
        generator = getattr(g, "module", g)  # unwrapped from DDP: G's loss regularises it
        state = StepState(fake, batch.labels, stats, {"generator": generator})
        return hinge_d_loss(score_real, score_fake), state

    def g_loss(
        self, d: nn.Module, batch: Batch, state: StepState, train_cfg: TrainConfig
    ) -> torch.Tensor:
        g_loss = hinge_g_loss(d(state.fake, state.fake_labels))
        if not self.ortho_weight:
            return g_loss
        return g_loss + self.ortho_weight * orthogonal_regularisation(state.extra["generator"])

    def serving_generator(self, g: nn.Module) -> nn.Module:
        return g.for_export()
