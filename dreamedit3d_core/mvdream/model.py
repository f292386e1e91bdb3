"""``MVDreamModel``: MVDream's multi-view UNet, text tower, VAE and schedule on stock diffusers/transformers modules.

The forward follows bytedance/MVDream ``MultiViewUNetModel.forward`` (``openaimodel.py``):

1. ``emb = time_embed(timestep_embedding(t)) + camera_embed(camera)`` (diffusers: ``time_embedding`` +
   ``class_embedding`` of type ``"projection"``, fed the 16-float cameras as ``class_labels``);
2. the LDM UNet with every ``attn1`` joint over the ``V`` views of one object (``(b f) l c -> b (f l) c``) and
   every ``attn2`` per view (:mod:`.attention`).

Batches are view-contiguous: row ``b * V + v`` is view ``v`` of object ``b``. For classifier-free guidance the
caller stacks ``[uncond × V, cond × V]`` objects and gives **both halves the same cameras** (MVDream ``ddim.py``
concatenates every conditioning tensor, cameras included).
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from ..cameras import NUM_VIEWS
from ..errors import ConfigError, ShapeError, TokenError
from .tokenizer import MVTokenizer

LATENT_SCALE = 0.18215


class MVDreamModel:
    """The loaded model. Build it with :func:`~dreamedit3d_core.mvdream.checkpoint.load_mvdream`.

    Attributes:
        unet: diffusers ``UNet2DConditionModel`` (``class_embed_type="projection"``, camera dim 16) whose ``attn1``
            processors are :class:`~.attention.MultiViewAttnProcessor`.
        vae: diffusers ``AutoencoderKL``.
        text_encoder: transformers ``CLIPTextModel`` holding MVDream's layers (23 of OpenCLIP ViT-H's 24).
        tokenizer: :class:`~.tokenizer.MVTokenizer` (ids equal ``open_clip.tokenize``).
        num_views: views per object (4).
        alphas_cumprod: float64 [1000], the checkpoint's own ``alphas_cumprod`` buffer (CPU).
        latent_scale: 0.18215, applied only by :meth:`encode_images` / :meth:`decode_latents`.
        model_hash: fingerprint of the weights as loaded (file-format independent).
        source: path of the file it was loaded from.
        kind: ``"mvdream-sd21"`` or ``"mvdream-sd15"``.
        file_layout: {released key: (shape, dtype)} of the file as loaded, in its order;
        passthrough: {released key: tensor} of the file's keys no module holds (kept to write them back);
        key_map: {"unet"/"vae"/"text": {diffusers name: source}}: what :func:`~.checkpoint.save_mvdream` needs to
            write the released layout back (empty for a model not built by ``load_mvdream``).
    """

    def __init__(self, unet, vae, text_encoder, tokenizer: MVTokenizer, alphas_cumprod: torch.Tensor,
                 num_views: int = NUM_VIEWS, model_hash: str = "", source: str = "", kind: str = "mvdream-sd21",
                 layout=None, passthrough=None, key_map=None):
        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.alphas_cumprod = alphas_cumprod.detach().to("cpu", torch.float64)
        self.num_views = int(num_views)
        self.latent_scale = LATENT_SCALE
        self.model_hash = model_hash
        self.source = source
        self.kind = kind
        self.file_layout = layout or {}
        self.passthrough = passthrough or {}
        self.key_map = key_map or {}

    # ------------------------------------------------------------------------------------------ device/dtype
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "MVDreamModel":
        """Move all modules (in place) and return ``self``."""
        for module in (self.unet, self.vae, self.text_encoder):
            torch.nn.Module.to(module, device=device, dtype=dtype)
        return self

    def modules(self):
        return {"unet": self.unet, "vae": self.vae, "text_encoder": self.text_encoder}

    def __repr__(self) -> str:
        return (f"MVDreamModel(kind={self.kind}, num_views={self.num_views}, device={self.device}, "
                f"dtype={self.dtype}, source={self.source!r})")

    # ----------------------------------------------------------------------------------------------- UNet
    def predict_noise(self, latents: torch.Tensor, timesteps, text_embeddings: torch.Tensor,
                      cameras: Optional[torch.Tensor], num_views: Optional[int] = None) -> torch.Tensor:
        """MVDream's eps prediction.

        Args:
            latents: float [B·V, 4, h, w], view-contiguous (index = b·V + v), already scaled by 0.18215.
            timesteps: int, float, or tensor [B·V] / [] of DDPM steps in [0, 1000).
            text_embeddings: float [B·V, 77, D] (one row per view; repeat the prompt per view).
            cameras: float [B·V, 16] (:func:`~dreamedit3d_core.cameras.get_camera` rows), or None only for a UNet
                without camera MLP. CFG halves must carry the same cameras.
            num_views: views per object; default :attr:`num_views`. ``1`` runs every row on its own (2D mode).

        Returns:
            eps, float [B·V, 4, h, w] in the UNet's dtype.
        """
        views = self.num_views if num_views is None else int(num_views)
        if latents.ndim != 4:
            raise ShapeError(f"latents must be [B*V, C, h, w], got {tuple(latents.shape)}")
        n = latents.shape[0]
        if views < 1 or n % views:
            raise ShapeError(f"the batch of {n} latents is not a whole number of {views}-view objects; "
                             "pass view-contiguous [B*V, ...] tensors")
        if text_embeddings.ndim != 3 or text_embeddings.shape[0] != n:
            raise ShapeError(f"text_embeddings must be [{n}, 77, D] (one row per view), got "
                             f"{tuple(text_embeddings.shape)}")
        dtype = self.dtype
        device = latents.device
        t = torch.as_tensor(timesteps, device=device)
        if t.ndim == 0:
            t = t.expand(n)
        if t.shape != (n,):
            raise ShapeError(f"timesteps must be a scalar or [{n}], got {tuple(t.shape)}")
        class_labels = None
        if self.unet.config.class_embed_type is not None:
            if cameras is None:
                raise ConfigError("MVDream needs cameras: pass get_camera(...) rows, [B*V, 16], the same for both "
                                  "CFG halves")
            if cameras.shape != (n, self.unet.config.projection_class_embeddings_input_dim):
                raise ShapeError(f"cameras must be [{n}, 16] (one row per view), got {tuple(cameras.shape)}")
            class_labels = cameras.to(device=device, dtype=dtype)  # diffusers does not cast class_labels
        out = self.unet(latents.to(dtype), t, encoder_hidden_states=text_embeddings.to(device=device, dtype=dtype),
                        class_labels=class_labels, cross_attention_kwargs={"num_views": views}, return_dict=False)
        return out[0]

    # ----------------------------------------------------------------------------------------------- text
    @property
    def token_embedding(self) -> torch.nn.Embedding:
        """The text tower's token embedding table [vocab, D] (placeholder rows appended by :meth:`add_tokens`)."""
        return self.text_encoder.get_input_embeddings()

    @property
    def text_dim(self) -> int:
        return int(self.text_encoder.config.hidden_size)

    def encode_text_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Text embeddings, float [B, 77, D], of token ids int64 [B, 77] (MVDream's penultimate-layer output)."""
        if ids.ndim != 2:
            raise ShapeError(f"token ids must be [B, 77], got {tuple(ids.shape)}")
        if int(ids.max()) >= self.token_embedding.num_embeddings or int(ids.min()) < 0:
            raise TokenError(f"token id {int(ids.max())} is outside the vocabulary of "
                             f"{self.token_embedding.num_embeddings}; add the placeholder tokens first")
        ids = ids.to(self.text_encoder.device)
        # no padding mask: OpenCLIP attends causally over the zero padding too
        return self.text_encoder(input_ids=ids, return_dict=True).last_hidden_state

    def encode_text(self, prompts: Sequence[str] | str) -> torch.Tensor:
        """Text embeddings, float [B, 77, D], of prompts (tokenised as ``open_clip.tokenize`` does)."""
        return self.encode_text_ids(self.tokenizer.encode(prompts))

    def add_tokens(self, tokens: Sequence[str], init_embeddings: torch.Tensor) -> List[int]:
        """Add placeholder tokens to the tokenizer and rows to the token embedding table.

        Args:
            tokens: K new whole-word tokens, e.g. ``["<hat>", "<dog>"]``.
            init_embeddings: float [K, D] initial rows.

        Returns:
            The K new token ids.
        """
        tokens = list(tokens)
        init = torch.as_tensor(init_embeddings)
        if init.ndim != 2 or init.shape != (len(tokens), self.text_dim):
            raise ShapeError(f"init_embeddings must be [{len(tokens)}, {self.text_dim}], got {tuple(init.shape)}")
        ids = self.tokenizer.add_tokens(tokens)
        table = self.token_embedding
        old = table.num_embeddings
        if ids[0] != old:
            raise TokenError(f"tokenizer ({ids[0]} ids) and embedding table ({old} rows) disagree; "
                             "add tokens only through MVDreamModel.add_tokens")
        self.text_encoder.resize_token_embeddings(old + len(tokens), mean_resizing=False)
        table = self.token_embedding
        with torch.no_grad():
            table.weight[old:] = init.to(device=table.weight.device, dtype=table.weight.dtype)
        return ids

    # ------------------------------------------------------------------------------------------------ VAE
    def encode_images(self, rgb: torch.Tensor, generator: Optional[torch.Generator] = None,
                      sample: bool = False) -> torch.Tensor:
        """VAE latents of images.

        Args:
            rgb: float [N, 3, H, W] in [0, 1], H and W multiples of 8.
            generator: for ``sample=True``.
            sample: draw from the posterior instead of taking its mode.

        Returns:
            float [N, 4, H/8, W/8], multiplied by 0.18215 (the SD scale; the UNet's input space).
        """
        if rgb.ndim != 4 or rgb.shape[1] != 3 or rgb.shape[-1] % 8 or rgb.shape[-2] % 8:
            raise ShapeError(f"images must be [N, 3, H, W] with H, W multiples of 8, got {tuple(rgb.shape)}")
        x = rgb.to(device=self.vae.device, dtype=self.vae.dtype) * 2.0 - 1.0
        posterior = self.vae.encode(x).latent_dist
        z = posterior.sample(generator=generator) if sample else posterior.mode()
        return z * self.latent_scale

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Images, float [N, 3, 8h, 8w] in [0, 1], of latents [N, 4, h, w] (in the 0.18215-scaled space)."""
        if latents.ndim != 4:
            raise ShapeError(f"latents must be [N, 4, h, w], got {tuple(latents.shape)}")
        z = latents.to(device=self.vae.device, dtype=self.vae.dtype) / self.latent_scale
        x = self.vae.decode(z).sample
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0)
