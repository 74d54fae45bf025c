"""MAE on ImageNet with ViT-B/16, the recipe of He et al. 2022 as facebookresearch/mae runs it.

`main_pretrain.py` as its PRETRAIN.md's command: `--model mae_vit_base_patch16 --norm_pix_loss
--mask_ratio 0.75 --epochs 800 --warmup_epochs 40 --blr 1.5e-4 --weight_decay 0.05`, batch 4096
(64 per GPU x 8 x 8 nodes): AdamW (betas 0.9, 0.95; biases and norms without weight decay), learning
rate 1.5e-4 x batch/256 after 40 warmup epochs, then a half-cycle cosine to 0 per step; the
decoder 8 blocks of 512 with 16 heads; views: a random resized crop of 20-100% and a flip. MAE
reports 83.6% fine-tuned top-1 for this ViT-B after 1600 epochs (68.0% linear probe).

Remaining differences from the reference: images are not standardised (selfsup.pretext.mae
says why it matters little); the crop is resized bilinearly (TensorFlow's), not bicubically;
augmentation seeds are per example (reproducible, resumable); ImageNet must already be
prepared in `--config.data_dir`. `:runlocal` shrinks it to a ~2 minute CPU run on the same code
path (ViT-Tiny with 8 px patches on 32 px images, a 2-block decoder of 64, 60 steps).
"""

import runpy
from pathlib import Path

import ml_collections

from selfsup.config import parse_runlocal
from selfsup.pretext import mae

common = runpy.run_path(str(Path(__file__).with_name("common.py")))

# The encoder's sin-cos position embeddings stay fixed (MAE's `requires_grad=False`).
FIXED_POS_EMBED = (("^encoder/pos_embed$", 0.0, "constant"),)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    runlocal = parse_runlocal(arg)
    config = common["pretraining"](
        "mae",
        mae.default_config(),
        runlocal,
        data=common["imagenet"](),
        batch_size=4096,
        num_epochs=800.0,
        model=common["encoder"]("vit_base", patch_size=16, image_size=224),
        optim=common["optimizer"](
            "adamw",
            1.5e-4,
            schedule="cosine",
            warmup_epochs=40.0,
            weight_decay=0.05,
            param_groups=FIXED_POS_EMBED,
        ),
        local=dict(batch_size=64, image_size=32),
    )
    config.optim.beta2 = 0.95
    if runlocal:
        config.mae.update(decoder_dim=64, decoder_depth=2, decoder_heads=4)
    return config
