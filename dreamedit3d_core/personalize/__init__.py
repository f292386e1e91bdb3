"""Personalisation: learn one token per component, then fine-tune, through the multi-view UNet.

* ``objective.py`` — what both phases minimise: ``Scene`` (cached latents, masks, cameras), ``TokenRows`` (the
  trainable placeholder rows), ``personalization_loss`` (masked diffusion + attention alignment [+ class prior]).
* ``losses.py`` — the pure loss functions it uses.
* ``train.py`` — the one training loop (resumable, interruptible, NaN-safe, tqdm by default) and its results.
* ``autograd.py`` — leaving ComfyUI's ``torch.inference_mode`` to train.
* ``copies.py`` — the private model a training node trains: copies of only the modules a phase changes.
* ``textual_inversion.py`` (phase 1, ``run_textual_inversion``) and ``finetune.py`` (phase 2, ``run_finetune``,
  LoRA and full files).
"""
