"""Segment Anything (SAM) prompted by the model's own attention, choosing the object the classifier sees.

SAM needs a prompt to know *which* object to cut out; the CAM of the predicted class supplies it: its
strongest local maxima become positive points and the box around the thresholded CAM a box prompt. Three
queries (box + points, box only, points only), each with SAM's three multimask outputs, give up to nine
candidate masks. The one kept is the one CLIP finds most like the predicted class (``ctx.score_masks``),
SAM's own predicted IoU breaking near-ties; without a scorer, the predicted IoU alone decides.

The image encoder is the expensive part (tens of seconds for ViT-B on a small CPU); the prompt decoder is
cheap. So each loaded model keeps the embeddings of its last few images, keyed by image content, and a
second question about the same image skips the encoder. A model is loaded once per (model type, checkpoint,
device) and shared by every :class:`SamSegmenter`; a lock serialises use of its predictor between visitors.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from segment_anything import SamPredictor, sam_model_registry
from segment_anything.modeling import Sam

from dapt_core.attention.metrics import binarize
from dapt_core.segment.base import (
    CamPromptConfig,
    Candidate,
    SegmentContext,
    SegmentResult,
    cam_box,
    cam_peaks,
    check_image,
    choose_candidate,
    context_cam,
    mask_area,
    pixel_hash,
    score_candidates,
)
from dapt_core.weights import resolve_weights, safe_torch_load

log = logging.getLogger(__name__)

SAM_WEIGHTS = {"vit_b": "sam-vit-b", "vit_l": "sam-vit-l", "vit_h": "sam-vit-h"}  # model type -> weights name
SAM_QUERIES = ("box+points", "box", "points")  # the prompt combinations SamSegmenter knows
# Image-encoder parameter counts, for a cost estimate before a model is loaded.
SAM_ENCODER_PARAMS = {"vit_b": 89.7e6, "vit_l": 303.3e6, "vit_h": 632.2e6}
SAM_ENCODER_TOKENS = (1024 // 16) ** 2  # SAM encodes a 1024 px square in 16 px patches


@dataclass(frozen=True)
class SamConfig:
    """How SAM is prompted, which candidates may be chosen, and what the cost estimate assumes."""

    prompts: CamPromptConfig = field(default_factory=CamPromptConfig)  # CAM -> points and box
    queries: tuple[str, ...] = SAM_QUERIES  # prompt combinations to ask, each with multimask output
    min_area: float = 0.001  # candidates covering less of the image are not chosen (nothing to align)
    max_area: float = 0.95  # ... nor those covering more (no background left to decouple)
    score_tolerance: float = 0.01  # CLIP scores this close to the best are a tie, broken by predicted IoU
    embedding_cache_size: int = 4  # image embeddings kept per loaded model (about 4 MB each)
    cpu_gflops_per_thread: float = 16.0  # encoder throughput per CPU thread, for estimates before a measurement
    gpu_gflops: float = 20000.0  # encoder throughput on a GPU, idem
    cpu_decoder_seconds: float = 0.4  # one prompt query (decoder + upsampling) on a 2-core CPU, idem
    gpu_decoder_seconds: float = 0.01  # ... on a GPU


@dataclass
class _Embedding:
    features: torch.Tensor  # (1, C, 64, 64) image embedding
    original_size: tuple[int, int]  # (H, W) of the image
    input_size: tuple[int, int]  # (h, w) after resizing the long side to 1024


class SamRuntime:
    """A SAM model with its predictor, the lock that guards the predictor and an LRU of image embeddings.

    Args:
        model: a built (and loaded) ``Sam``, in eval mode on its device.
        cache_size: embeddings kept, >= 1.
    """

    def __init__(self, model: Sam, cache_size: int) -> None:
        if cache_size < 1:
            raise ValueError(f"embedding_cache_size must be >= 1, got {cache_size}")
        self.model = model.eval()
        self.predictor = SamPredictor(self.model)
        self.lock = threading.RLock()  # held around set_image/predict: the predictor is stateful
        self.cache_size = cache_size
        self.encoder_seconds: float | None = None  # last measured encoder time
        self.decoder_seconds: float | None = None  # last measured time of one prompt query
        self._embeddings: OrderedDict[str, _Embedding] = OrderedDict()
        self._cache_lock = threading.Lock()  # only the dict: estimates must not wait for an encoder run

    @property
    def device(self) -> torch.device:
        return self.model.device

    def has_embedding(self, key: str) -> bool:
        """Whether the embedding of the image with content hash ``key`` is cached."""
        with self._cache_lock:
            return key in self._embeddings

    def encoder_flops(self) -> float:
        """Approximate multiply-adds x 2 of one encoder pass: parameters times tokens."""
        encoder = self.model.image_encoder
        params = sum(p.numel() for p in encoder.parameters())
        patch = encoder.patch_embed.proj.kernel_size[0]
        return 2.0 * params * (encoder.img_size // patch) ** 2

    def set_image(self, image: np.ndarray, key: str) -> bool:
        """Points the predictor at ``image``, from the cache when possible. Call with :attr:`lock` held.

        Returns:
            True when the embedding came from the cache (the encoder did not run).
        """
        with self._cache_lock:
            entry = self._embeddings.get(key)
            if entry is not None:
                self._embeddings.move_to_end(key)
        if entry is not None and entry.original_size == tuple(image.shape[:2]):
            predictor = self.predictor
            predictor.reset_image()
            predictor.features = entry.features
            predictor.original_size = entry.original_size
            predictor.input_size = entry.input_size
            predictor.is_image_set = True
            return True
        start = time.perf_counter()
        self.predictor.set_image(image, image_format="RGB")
        self.encoder_seconds = time.perf_counter() - start
        log.debug("SAM encoder: %.2f s for a %s image", self.encoder_seconds, image.shape[:2])
        entry = _Embedding(self.predictor.features, tuple(self.predictor.original_size),
                           tuple(self.predictor.input_size))
        with self._cache_lock:
            self._embeddings[key] = entry
            while len(self._embeddings) > self.cache_size:
                self._embeddings.popitem(last=False)
        return False


_RUNTIMES: dict[tuple[str, str, str], SamRuntime] = {}
_RUNTIMES_LOCK = threading.Lock()


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_model_type(model_type: str) -> str:
    """Returns ``model_type`` if SAM knows it, else raises ValueError listing the known types."""
    if model_type not in SAM_WEIGHTS:
        raise ValueError(f"unknown SAM model_type {model_type!r}; choose from {', '.join(SAM_WEIGHTS)}")
    return model_type


def load_sam(model_type: str, checkpoint: str | Path, device: str | torch.device | None = None) -> Sam:
    """Builds SAM and loads a checkpoint without unpickling anything but tensors.

    Args:
        model_type: ``"vit_b"``, ``"vit_l"`` or ``"vit_h"``.
        checkpoint: the official ``sam_vit_*.pth`` state dict.
        device: where the model goes; the GPU when there is one if None.

    Raises:
        ValueError: unknown model type, or a checkpoint that does not fit the architecture (the message
            names the file and the mismatched keys); UnsafeCheckpointError for pickled code.
    """
    model = sam_model_registry[check_model_type(model_type)](checkpoint=None)
    state = safe_torch_load(checkpoint)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"SAM checkpoint {checkpoint} does not fit model_type {model_type!r}: "
                         f"{str(err).splitlines()[0]}") from err
    return model.to(torch.device(device) if device is not None else _default_device()).eval()


def shared_runtime(model_type: str, checkpoint: Path, device: torch.device, cache_size: int) -> SamRuntime:
    """The process-wide runtime of (model type, checkpoint, device), loading the model on first use."""
    key = (model_type, str(Path(checkpoint).resolve()), str(device))
    with _RUNTIMES_LOCK:
        if key not in _RUNTIMES:
            log.info("loading SAM %s from %s on %s", model_type, checkpoint, device)
            _RUNTIMES[key] = SamRuntime(load_sam(model_type, checkpoint, device), cache_size)
        return _RUNTIMES[key]


def release_shared_models() -> None:
    """Drops every shared SAM model (and its embeddings); the next use loads it again."""
    with _RUNTIMES_LOCK:
        _RUNTIMES.clear()


class SamSegmenter:
    """SAM prompted from the CAM, choosing among candidates by CLIP score; see the module docstring.

    Args:
        model_type: ``"vit_b"`` (default), ``"vit_l"`` or ``"vit_h"``.
        checkpoint: explicit weight file; else ``checkpoints/``, the cache, or a download
            (:func:`dapt_core.weights.resolve_weights`).
        device: where the model runs; the GPU when there is one if None.
        model: an already built ``Sam`` to use instead of loading one (tests, custom weights); it is not
            shared with other segmenters. ``model_type``/``checkpoint`` only label it then.
        config: prompts, candidate rules and cost assumptions.

    Raises:
        ValueError: unknown ``model_type``.
        WeightsNotFoundError: no ``model`` given and the checkpoint is nowhere to be found; the message says
            how to fetch it.
    """

    name = "sam"
    needs_cam = True

    def __init__(self, model_type: str = "vit_b", checkpoint: str | Path | None = None,
                 device: str | torch.device | None = None, *, model: Sam | None = None,
                 config: SamConfig = SamConfig()) -> None:
        self.model_type = check_model_type(model_type)
        unknown = sorted(set(config.queries) - set(SAM_QUERIES))
        if unknown or not config.queries:
            raise ValueError(f"SAM queries must be a non-empty subset of {SAM_QUERIES}, got {config.queries}")
        self.config = config
        self._runtime: SamRuntime | None = None
        if model is not None:
            self.checkpoint = Path(checkpoint) if checkpoint is not None else None
            self._runtime = SamRuntime(model, config.embedding_cache_size)
            self.device = self._runtime.device
        else:
            self.checkpoint = resolve_weights(SAM_WEIGHTS[self.model_type], checkpoint)
            self.device = torch.device(device) if device is not None else _default_device()

    @property
    def runtime(self) -> SamRuntime:
        """The model in use, loaded (once per process) on first access."""
        if self._runtime is None:
            self._runtime = shared_runtime(self.model_type, self.checkpoint, self.device,
                                           self.config.embedding_cache_size)
        return self._runtime

    def is_cached(self, image_hash: str) -> bool:
        """Whether the encoder can be skipped for the image with this content hash."""
        return self._runtime is not None and self._runtime.has_embedding(image_hash)

    def estimated_seconds(self, image_shape: tuple[int, ...], image_hash: str | None = None) -> float:
        """Expected time of :meth:`segment`: the encoder (unless the embedding is cached) plus the queries.

        Uses the last measured times once the model has run, before that an estimate from the encoder's
        size and a nominal device throughput (:class:`SamConfig`). SAM resizes every image to 1024 px, so
        ``image_shape`` hardly matters.
        """
        cfg, runtime = self.config, self._runtime
        on_gpu = self.device.type != "cpu"
        decoder = runtime.decoder_seconds if runtime and runtime.decoder_seconds is not None else (
            cfg.gpu_decoder_seconds if on_gpu else cfg.cpu_decoder_seconds)
        queries = len(cfg.queries) * decoder
        if image_hash is not None and self.is_cached(image_hash):
            return queries
        if runtime is not None and runtime.encoder_seconds is not None:
            return runtime.encoder_seconds + queries
        flops = runtime.encoder_flops() if runtime else 2.0 * SAM_ENCODER_PARAMS[self.model_type] * SAM_ENCODER_TOKENS
        rate = cfg.gpu_gflops if on_gpu else cfg.cpu_gflops_per_thread * torch.get_num_threads()
        return flops / (rate * 1e9) + queries

    def _queries(self, cam: np.ndarray) -> tuple[list[tuple[str, dict]], dict]:
        """The prompt sets to ask SAM, as (label, predictor.predict keyword arguments), and what they were."""
        height, width = cam.shape
        points, box = cam_peaks(cam, self.config.prompts), cam_box(cam, self.config.prompts)
        info: dict = {"prompt_fallback": None}
        if len(points) == 0 and box is None:
            # A flat CAM points nowhere; the centre of the image and the whole frame are the least biased ask.
            points = np.array([[width / 2.0, height / 2.0]], dtype=np.float32)
            box = np.array([0.0, 0.0, width, height], dtype=np.float32)
            info["prompt_fallback"] = "the CAM is all zero: centre point and whole-image box"
        info["points"] = points.round(1).tolist()
        info["box"] = None if box is None else box.round(1).tolist()
        n = len(points)
        point_args = {"point_coords": points, "point_labels": np.ones(n, dtype=np.int64)}
        noun = f"{n} point" + ("s" if n != 1 else "")
        options = {
            "box+points": (f"box+{noun}", {**point_args, "box": box}) if n and box is not None else None,
            "box": ("box", {"box": box}) if box is not None else None,
            "points": (noun, point_args) if n else None,
        }
        return [options[q] for q in self.config.queries if options[q] is not None], info

    def segment(self, image: np.ndarray, ctx: SegmentContext) -> SegmentResult:
        """Cuts out the object the CAM points at.

        Args:
            image: (H, W, 3) uint8 RGB.
            ctx: ``cam`` (required) for the prompts; ``score_masks`` to choose by CLIP score; ``image_hash``
                to key the embedding cache (hashed from the pixels when None).

        Returns:
            All candidates with their predicted IoU and (for those with an eligible area) CLIP score, the
            chosen index, and ``info`` with ``embedding_cached``, ``points``, ``box``, ``chosen_by``
            (``"clip_score"``/``"predicted_iou"``), ``fallback`` (None, or why the CAM mask was used
            instead) and ``encoder_seconds``.

        Raises:
            SegmentationError: bad image, no / bad CAM, or a scorer returning the wrong number of scores.
        """
        start = time.perf_counter()
        image = check_image(image)
        cam = context_cam(ctx, image.shape, self.name)
        key = ctx.image_hash or pixel_hash(image)
        queries, info = self._queries(cam)
        runtime = self.runtime
        with runtime.lock:
            cached = runtime.set_image(image, key)
            asked = time.perf_counter()
            answers = [(label, runtime.predictor.predict(multimask_output=True, **kwargs))
                       for label, kwargs in queries]
            runtime.decoder_seconds = (time.perf_counter() - asked) / max(len(queries), 1)
        candidates = [
            Candidate(mask=masks[j].astype(bool), prompt=f"{label}, multimask {j}", predicted_iou=float(ious[j]),
                      clip_score=None, area=mask_area(masks[j]))
            for label, (masks, ious, _) in answers for j in range(masks.shape[0])
        ]
        cfg = self.config
        eligible = [i for i, c in enumerate(candidates) if cfg.min_area <= c.area <= cfg.max_area]
        score_candidates(candidates, eligible, ctx.score_masks)
        chosen = choose_candidate(candidates, eligible, cfg.score_tolerance)
        if chosen is None:
            mask = binarize(cam, cfg.prompts.box_threshold)
            info["fallback"] = (f"no SAM candidate covers between {cfg.min_area:g} and {cfg.max_area:g} of the "
                                f"image; using the CAM >= {cfg.prompts.box_threshold:g} x peak")
        else:
            mask = candidates[chosen].mask
            info["fallback"] = None
        info.update(embedding_cached=cached, model_type=self.model_type, image_hash=key,
                    chosen_by="clip_score" if ctx.score_masks is not None and eligible else "predicted_iou",
                    encoder_seconds=None if cached else runtime.encoder_seconds)
        return SegmentResult(mask=mask, segmenter=self.name, candidates=candidates, chosen=chosen,
                             seconds=time.perf_counter() - start, info=info)
