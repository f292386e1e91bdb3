"""MVDream on stock diffusers/transformers modules.

* :mod:`.checkpoint`: ``load_mvdream`` / ``save_mvdream`` (the released ``sd-v2.1-base-4view.pt`` layout);
* :mod:`.layout`: checkpoint kinds, architecture from shapes, key map derived from diffusers' converters;
* :mod:`.model`: ``MVDreamModel`` (``predict_noise``, ``encode_text``, ``encode_images``, ``decode_latents``, ``add_tokens``);
* :mod:`.attention`: ``MultiViewAttnProcessor`` (joint attn1 over views) and ``record_cross_attention``;
* :mod:`.tokenizer`: ``MVTokenizer``, ids equal to ``open_clip.tokenize``, built offline from open_clip's BPE file.
"""
