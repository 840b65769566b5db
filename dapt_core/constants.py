"""One constant per fact that several parts of the library share (training, analysis, masks, the app).

Facts that belong to one module only stay in that module.
"""

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
MAX_IMAGE_PIXELS = 40_000_000  # width * height accepted by the image reader, checked before decoding
MASK_THRESHOLD = 0.5  # a soft mask in [0, 1] is foreground at or above this value (8-bit: 128 and up)
# A mask of another size than its image is rescaled onto it only when their aspect ratios (w/h) differ by at most
# this share; more means it was made for another picture (analysis and training both refuse it).
MASK_ASPECT_TOLERANCE = 0.02
CAM_THRESHOLD = 0.5  # DAPT's coarse cue: foreground where CAM / max(CAM) reaches this (official code)
ZERO_SHOT_CONTEXT = "a photo of a"  # CLIP's prompt prefix; CoOp started from it and not trained is zero-shot CLIP
# The official schedule switches after 7 of 10 epochs (Ferenas/DAPT trainers/maple.py: `epoch > 6`).
OFFICIAL_EPOCHS = 10
OFFICIAL_SWITCH_EPOCH = 7
# DAPT settings added after records (prompt sets, training states, grid cells) were first written, with the value
# every earlier record was trained with: a record that lacks one reads as that value, whatever today's default
DAPT_RECORD_DEFAULTS = {"cam_method": "gradcam"}
