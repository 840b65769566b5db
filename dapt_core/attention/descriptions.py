"""What each attribution method is, in one line, for menus and help texts; imports nothing heavy.

The keys are exactly those of :data:`dapt_core.attention.cam.CAM_METHODS` (a test checks it).
"""

from __future__ import annotations

# DAPT's coarse cue as published: Grad-CAM at the last vision block's first LayerNorm
DEFAULT_METHOD = "gradcam"

METHOD_DESCRIPTIONS: dict[str, str] = {
    "gradcam": "Grad-CAM at the last block's ln_1: patch tokens weighted by their mean gradient "
               "(DAPT's published coarse cue)",
    "gradcam++": "Grad-CAM++ at the last block's ln_1: higher-order gradient weights, better for several "
                 "object parts",
    "eigencam": "Eigen-CAM at the last block's ln_1: the first principal component of the patch tokens "
                "(class-agnostic, no gradients)",
    "layercam": "LayerCAM at the last block's ln_1: every patch token weighted by its own positive gradient",
    "legrad": "LeGrad (Bousselham et al. 2024): positive gradients of each layer's class score with respect "
              "to that layer's attention map, summed over layers",
    "relevance": "Gradient-weighted attention relevance (Chefer et al., ICCV 2021): gradient-weighted "
                 "attention rolled out through every layer, class-token row",
}
