"""What the web bundle (:mod:`dapt_core.experiments.web_bundle`) bundles and how it picks its example scenes, as
plain data: the ``bench web-bundle`` parser reads its defaults from here without importing torch."""

BUNDLE_METHODS = ("coop", "coop+dapt-mask", "maple", "maple+dapt-mask")  # the prompt sets bundled for the app
# (base, DAPT) whose difference ranks the scenes: MaPLe, the method the official DAPT wraps (fixed before the
# benchmark's result was seen; docs/results/web_bench_settings.md)
PICK_PAIR = ("maple", "maple+dapt-mask")
PICK_QUANTILES = (0.1, 0.5, 0.9)
# the relevance map first: the map of the gates' attention registration v3, the one that ranked their control
# prompt sets the right way; Grad-CAM second: the map and DAPT's coarse cue
BUNDLE_CAMS = ("relevance", "gradcam")
