"""StackGAN (Zhang et al. 2017) at digit scale: text -> 16x16 sketch -> 32x32 image.

* Text encoder: token embeddings averaged over the caption's words (padding id 0 ignored),
  then a linear layer; it lives inside the exported graph, so a request sends token ids.
* Conditioning augmentation (CA): the text embedding gives mu and log-variance of a Gaussian
  text code c = mu + sigma * eps; the KL term to N(0, I) keeps the code space smooth. In the
  exported graph eps is the last ``c_dim`` values of z, so a seed fixes the whole image.
* Stage-I: [noise, c] -> 16x16. Stage-II: Stage-I's image, encoded to 8x8 features and
  joined with a second CA code of the same text, through residual blocks -> 32x32.
* Matching-aware discriminators, one per stage: the image's features joined with the text
  embedding; (real, matching caption) is real, (real, mismatched caption) and (fake,
  matching caption) are fake.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

PAPER = "Zhang et al. 2017, StackGAN: Text to Photo-realistic Image Synthesis (arXiv:1612.03242)"


@dataclass
class StackGANConfig:
    vocab_size: int = 25
    max_tokens: int = 10
    embed_dim: int = 32  # word embedding
    text_dim: int = 64  # caption embedding
    c_dim: int = 16  # CA text code
    noise_dim: int = 32  # noise part of z; z = [noise, eps] has noise_dim + c_dim values
    ngf: int = 32
    ndf: int = 32
    channels: int = 1

    @property
    def nz(self) -> int:
        return self.noise_dim + self.c_dim

    def to_dict(self) -> dict:
        return asdict(self)


class TextEncoder(nn.Module):
    """Token ids [N, L] (0 = padding) -> caption embedding [N, text_dim].

    Each word has an embedding and a learned importance score; the caption is the
    score-weighted (softmax over its words) mean of its embeddings, so a word that tells the
    image apart (the digit) can outweigh frame words ("a", "the digit") instead of being
    diluted by them. The output has norm sqrt(text_dim): pre-trained against images on the
    cosine (``joint_embedding_loss``), then frozen.
    """

    def __init__(self, cfg: StackGANConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim, padding_idx=0)
        self.score = nn.Embedding(cfg.vocab_size, 1, padding_idx=0)
        self.proj = nn.Linear(cfg.embed_dim, cfg.text_dim)
        self.scale = float(cfg.text_dim) ** 0.5

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pad = tokens == 0  # N x L
        score = self.score(tokens).squeeze(-1).masked_fill(pad, -1e4)  # N x L
        weight = torch.softmax(score, dim=1).unsqueeze(-1)  # N x L x 1
        pooled = (self.embed(tokens) * weight).sum(1)  # N x embed_dim
        return F.normalize(self.proj(pooled), dim=1) * self.scale  # N x text_dim


class ImageEncoder(nn.Module):
    """Image [N, C, 32, 32] -> embedding [N, text_dim]: the image side of the pre-training
    only (the text encoder's partner in the joint embedding); not part of the GAN."""

    def __init__(self, cfg: StackGANConfig) -> None:
        super().__init__()
        w = cfg.ndf
        self.net = nn.Sequential(
            nn.Conv2d(cfg.channels, w, 4, 2, 1),  # w x 16 x 16
            nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 4, 2, 1),  # 2w x 8 x 8
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * w, 2 * w, 4, 2, 1),  # 2w x 4 x 4
            nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Linear(2 * w * 16, cfg.text_dim),  # text_dim
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def joint_embedding_loss(
    image: torch.Tensor, text: torch.Tensor, keys: torch.Tensor, temperature: float = 0.1
) -> torch.Tensor:
    """Symmetric matching loss on cosine similarity: each image must pick out its captions
    among the batch's, and each caption its images. Pairs with the same ``keys`` (the same
    digit and attribute words) all count as matches, so a batch holds no false negatives."""
    logits = F.normalize(image, dim=1) @ F.normalize(text, dim=1).T / temperature  # N x N
    same = (keys[:, None] == keys[None, :]).float()
    target = same / same.sum(1, keepdim=True)
    image_to_text = -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
    text_to_image = -(target * F.log_softmax(logits.T, dim=1)).sum(1).mean()
    return 0.5 * (image_to_text + text_to_image)


class CondAugment(nn.Module):
    """Caption embedding -> (c, mu, logvar), c = mu + exp(logvar / 2) * eps."""

    def __init__(self, cfg: StackGANConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.text_dim, 2 * cfg.c_dim)

    def forward(self, text: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, ...]:
        mu, logvar = self.fc(text).chunk(2, dim=1)  # N x c_dim each
        return mu + torch.exp(0.5 * logvar) * eps, mu, logvar


def kl_loss(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)), averaged over the batch."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)).mean()


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(True),
    )


class ResBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(ch, ch, 3, 1, 1, bias=False),
            nn.BatchNorm2d(ch),
            nn.ReLU(True),
            nn.Conv2d(ch, ch, 3, 1, 1, bias=False),
            nn.BatchNorm2d(ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class StageOneGenerator(nn.Module):
    """[noise, c] -> 16x16 image in [-1, 1]."""

    def __init__(self, cfg: StackGANConfig) -> None:
        super().__init__()
        ch = cfg.ngf * 2
        self.fc = nn.Sequential(
            nn.Linear(cfg.noise_dim + cfg.c_dim, ch * 4 * 4, bias=False),
            nn.BatchNorm1d(ch * 4 * 4),
            nn.ReLU(True),
        )
        self.ch = ch
        self.net = nn.Sequential(
            _up(ch, cfg.ngf),  # ngf x 8 x 8
            _up(cfg.ngf, cfg.ngf // 2),  # ngf/2 x 16 x 16
            nn.Conv2d(cfg.ngf // 2, cfg.channels, 3, 1, 1),  # C x 16 x 16
            nn.Tanh(),
        )

    def forward(self, noise: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.fc(torch.cat([noise, c], 1)).view(-1, self.ch, 4, 4)  # 2ngf x 4 x 4
        return self.net(h)


class StageTwoGenerator(nn.Module):
    """Stage-I's 16x16 image + c -> 32x32 image in [-1, 1]."""

    def __init__(self, cfg: StackGANConfig) -> None:
        super().__init__()
        ngf = cfg.ngf
        self.encode = nn.Sequential(
            nn.Conv2d(cfg.channels, ngf // 2, 3, 1, 1),  # ngf/2 x 16 x 16
            nn.ReLU(True),
            nn.Conv2d(ngf // 2, ngf, 4, 2, 1, bias=False),  # ngf x 8 x 8
            nn.BatchNorm2d(ngf),
            nn.ReLU(True),
        )
        self.joint = nn.Sequential(
            nn.Conv2d(ngf + cfg.c_dim, ngf, 3, 1, 1, bias=False),  # ngf x 8 x 8
            nn.BatchNorm2d(ngf),
            nn.ReLU(True),
            ResBlock(ngf),
            ResBlock(ngf),
        )
        self.decode = nn.Sequential(
            _up(ngf, ngf // 2),  # ngf/2 x 16 x 16
            _up(ngf // 2, ngf // 4),  # ngf/4 x 32 x 32
            nn.Conv2d(ngf // 4, cfg.channels, 3, 1, 1),  # C x 32 x 32
            nn.Tanh(),
        )

    def forward(self, low: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.encode(low)
        tiled = c[:, :, None, None].expand(-1, -1, h.shape[2], h.shape[3])
        return self.decode(self.joint(torch.cat([h, tiled], 1)))


class MatchingDiscriminator(nn.Module):
    """(image, caption embedding) -> logit; the image side halves the size down to 4x4."""

    def __init__(self, cfg: StackGANConfig, image_size: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(cfg.channels, cfg.ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch, size = cfg.ndf, image_size // 2
        while size > 4:
            layers += [
                nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False),  # 2ch x size/2 x size/2
                nn.BatchNorm2d(ch * 2),
                nn.LeakyReLU(0.2),
            ]
            ch, size = ch * 2, size // 2
        self.image = nn.Sequential(*layers)  # ch x 4 x 4
        self.text = nn.Linear(cfg.text_dim, 32)
        self.joint = nn.Sequential(
            nn.Conv2d(ch + 32, ch, 1),  # ch x 4 x 4
            nn.LeakyReLU(0.2),
            nn.Conv2d(ch, 1, 4),  # 1 x 1 x 1
        )

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.judge(self.image(image), text)

    def judge(self, h: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Image features [N, ch, 4, 4] + caption embeddings -> logits [N]."""
        t = F.leaky_relu(self.text(text), 0.2)[:, :, None, None].expand(-1, -1, 4, 4)
        return self.joint(torch.cat([h, t], 1)).view(-1)


class StackGenerator(nn.Module):
    """Everything from tokens and z to the 16x16 and 32x32 images."""

    def __init__(self, cfg: StackGANConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.text = TextEncoder(cfg)
        self.ca1 = CondAugment(cfg)
        self.ca2 = CondAugment(cfg)
        self.stage1 = StageOneGenerator(cfg)
        self.stage2 = StageTwoGenerator(cfg)

    def forward(self, tokens: torch.Tensor, z: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        noise, eps = z[:, : cfg.noise_dim], z[:, cfg.noise_dim :]
        text = self.text(tokens)
        c1, mu1, logvar1 = self.ca1(text, eps)
        low = self.stage1(noise, c1)
        c2, mu2, logvar2 = self.ca2(text, eps)
        high = self.stage2(low.detach() if self.training else low, c2)
        kl = kl_loss(mu1, logvar1) + kl_loss(mu2, logvar2)
        return {"text": text, "low": low, "high": high, "kl": kl}


class ServingStackGAN(nn.Module):
    """The exported graph: z float32 [N, nz], tokens int64 [N, L] -> uint8 [N, 32, 32, C]."""

    def __init__(self, generator: StackGenerator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, z: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        x = self.generator(tokens, z)["high"]
        pixels = torch.clamp(torch.round((x + 1.0) * 127.5), 0, 255)
        return pixels.permute(0, 2, 3, 1).to(torch.uint8)
