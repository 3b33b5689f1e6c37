"""The S-SAM model: SAM's three parts plus a label-name prompt token (DESIGN.md 5).

Submodules keep SAM's names (``image_encoder``, ``prompt_encoder``, ``mask_decoder``) so
parameter names follow the official checkpoint layout; ``text_affine`` maps CLIP features to a
prompt token and ``text_encoder`` (frozen, optional) supplies those features by label name.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from torch import nn

from ssam.sam.families import get_family
from ssam.text import TextAffine, TextEncoder


class SSAM(nn.Module):
    """Images (B, 3, S, S), normalised as the base expects (``normalisation``), plus prompts ->
    mask logits.

    Prompts per image: a label name (-> one text token), and/or SAM points and boxes in input
    pixel coordinates (x, y). Without points or boxes the prompt encoder contributes an empty
    sparse set and its no-mask dense embedding; the text token is appended to the sparse set.
    ``variant`` names the base (``ssam.sam.variants``), whose encoder family says how pixels
    are normalised and which parameters each method trains.
    """

    def __init__(
        self,
        sam: Sam,
        text_affine: TextAffine,
        text_encoder: TextEncoder | None = None,
        image_size: int = 1024,
        *,
        variant: str,
    ) -> None:
        super().__init__()
        self.image_encoder = sam.image_encoder
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder
        self.text_affine = text_affine
        self.text_encoder = text_encoder
        self.image_size = image_size
        self.variant = variant
        self.normalisation = get_family(variant).normalisation
        self.weights_source = f"base: {variant}"  # the factory and loaders say where from

    @property
    def device(self) -> torch.device:
        return self.text_affine.linear.weight.device

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> image embeddings (B, C, S/p, S/p), p the encoder's stride (16 in SAM
        ViT, 4 in TinyViT)."""
        if images.dim() != 4 or images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"images must be (B, 3, {self.image_size}, {self.image_size}), "
                f"got {tuple(images.shape)}"
            )
        return self.image_encoder(images)

    def text_features(self, labels: Sequence[str]) -> torch.Tensor:
        """CLIP features (N, D) of label names, from the frozen encoder's cache."""
        if self.text_encoder is None:
            raise RuntimeError("this model has no text encoder; pass text features instead")
        return self.text_encoder.encode(labels, device=self.device)

    def label_tokens(self, labels: Sequence[str] | torch.Tensor) -> torch.Tensor:
        """Label names, or their CLIP features (N, D), -> prompt tokens (N, 1, C)."""
        features = labels if torch.is_tensor(labels) else self.text_features(labels)
        return self.text_affine(features).unsqueeze(1)

    def decode(
        self,
        image_embedding: torch.Tensor,
        tokens: torch.Tensor | None = None,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One image's embedding (1, C, h, w) and N prompts -> low-res logits (N, 1, 4h, 4w).

        ``tokens`` (N, 1, C) label tokens; ``points`` ((N, P, 2) coords, (N, P) labels) and
        ``boxes`` (N, 4) XYXY, all in input pixels. All N prompts share one decoder call.
        """
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=None)
        if tokens is not None:
            if sparse.shape[0] not in (1, tokens.shape[0]) and sparse.shape[1] > 0:
                raise ValueError(
                    f"{tokens.shape[0]} label tokens but {sparse.shape[0]} point/box prompts"
                )
            sparse = sparse.expand(tokens.shape[0], -1, -1)
            sparse = torch.cat([sparse, tokens.to(sparse.dtype)], dim=1)
            dense = dense.expand(tokens.shape[0], -1, -1, -1)
        logits, _ = self.mask_decoder(
            image_embeddings=image_embedding,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        return logits

    def upscale(self, low_res: torch.Tensor) -> torch.Tensor:
        """(N, 1, 4h, 4w) -> (N, 1, S, S), bilinear as SAM's ``postprocess_masks``; returned
        as they are when the decoder's logits already have the input's size (TinyViT)."""
        size = (self.image_size, self.image_size)
        if tuple(low_res.shape[-2:]) == size:
            return low_res
        return F.interpolate(low_res, size, mode="bilinear", align_corners=False)

    def forward(
        self,
        images: torch.Tensor | None,
        labels: Sequence[str] | torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        rows: slice | None = None,
        embeddings: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Images (B, 3, S, S) with one prompt each -> logits (B, 1, S, S).

        ``labels``: B label names (or CLIP features (B, D)); ``boxes`` (B, 4) XYXY; ``points``
        ((B, P, 2), (B, P)). Image i is decoded with prompt i only, all B in one decoder call.
        ``rows``: the images are these rows of a larger batch whose labels are ``labels``
        (all of them): the label tokens are computed for the whole batch, so that the
        text-affine BatchNorm sees the whole batch's statistics, and these rows are kept.
        ``embeddings``: the images' embeddings (``encode_images``) instead of the images
        (``images`` None), as training on stored embeddings passes them.
        """
        if (images is None) == (embeddings is None):
            raise ValueError("give either images or their embeddings")
        if embeddings is None:
            embeddings = self.encode_images(images)
        tokens = self.label_tokens(labels) if labels is not None else None
        if tokens is not None and rows is not None:
            tokens = tokens[rows]
        if tokens is None and boxes is None and points is None:
            raise ValueError("give each image a label name, a box or points")
        batch = embeddings.shape[0]
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=None)
        if sparse.shape[0] not in (1, batch) or (tokens is not None and len(tokens) != batch):
            raise ValueError(f"{batch} images need {batch} prompts, one each")
        sparse, dense = sparse.expand(batch, -1, -1), dense.expand(batch, -1, -1, -1)
        if tokens is not None:
            sparse = torch.cat([sparse, tokens.to(sparse.dtype)], dim=1)
        return self.upscale(self._decode_paired(embeddings, sparse, dense))

    def _decode_paired(
        self, embeddings: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor
    ) -> torch.Tensor:
        """Image i with prompt set i, for all i at once -> low-res logits (B, 1, 4h, 4w).

        SAM's ``MaskDecoder.predict_masks`` decodes the N prompts of one image; this is the same
        computation (``multimask_output=False``: first mask token) with the image embedding
        paired to its own prompts instead of repeated for each.
        """
        decoder = self.mask_decoder
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(sparse.shape[0], -1, -1)
        tokens = torch.cat((output_tokens, sparse), dim=1)
        src = embeddings + dense
        pos_src = self.prompt_encoder.get_dense_pe().expand(src.shape[0], -1, -1, -1)
        b, c, h, w = src.shape
        hs, src = decoder.transformer(src, pos_src, tokens)
        upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper = decoder.output_hypernetworks_mlps[0](hs[:, 1, :])
        b, c, h, w = upscaled.shape
        return (hyper[:, None, :] @ upscaled.view(b, c, h * w)).view(b, 1, h, w)

    @torch.no_grad()
    def segment_labels(self, images: torch.Tensor, labels: Sequence[str]) -> torch.Tensor:
        """Every label on every image: (B, 3, S, S) -> probabilities (B, L, S, S) in [0, 1].

        The encoder runs once per image and the decoder once per image for all L labels.
        """
        embeddings = self.encode_images(images)
        tokens = self.label_tokens(list(labels))
        probs = [self.upscale(self.decode(e[None], tokens)).sigmoid()[:, 0] for e in embeddings]
        return torch.stack(probs)
