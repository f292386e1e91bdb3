"""A tiny seeded random Segment Anything model, built from segment-anything's own classes, for tests, CI fixtures and the
example workflows' hosts (no real SAM weights exist where this is tested; ``torch.save(tiny_sam().state_dict(), path)``
writes a file in the released ``.pth`` state-dict layout that ``segment_anything``'s registry loads with its tiny shapes)."""

from __future__ import annotations

from functools import partial

import torch


def tiny_sam(seed: int = 0):
    """A tiny random Segment Anything model (every parameter seeded, so the same seed gives the same model anywhere).

    img_size 64, patch 8 (an 8x8 token grid), window 3 with block 1 global, prompt dim 16, decoder with SAM's 8 heads.
    """
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(seed)
    sam = Sam(
        image_encoder=ImageEncoderViT(img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
                                      out_chans=16, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                                      use_rel_pos=True, window_size=3, global_attn_indexes=(1,)),
        prompt_encoder=PromptEncoder(embed_dim=16, image_embedding_size=(8, 8), input_image_size=(64, 64),
                                     mask_in_chans=8),
        mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                 transformer=TwoWayTransformer(depth=2, embedding_dim=16, mlp_dim=32, num_heads=8),
                                 transformer_dim=16, iou_head_depth=3, iou_head_hidden_dim=24),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sam.parameters():  # zero-initialised rel-pos / pos-embed too, so every weight matters
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return sam.eval()
