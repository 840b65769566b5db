"""DAPT attention explorer: where do learned prompts make CLIP look, and does DAPT move it onto the object?

A thin Gradio shell over ``dapt_core``: compare prompt sets on an image, tune prompts on a few labelled images,
see and exchange prompt sets. ``python app.py`` serves on 127.0.0.1:7860 (``--host``, ``--port``, ``--share``,
``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``); ``--backbone NAME`` or ``DAPT_BACKBONE`` forces a backbone.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import cv2
import gradio as gr
import numpy as np
import PIL.Image

from dapt_core import app_support as support
from dapt_core.analysis import analyze
from dapt_core.backbones import Backbone
from dapt_core.attention.cam import CAM_METHODS
from dapt_core.viz.figure import figure_to_array, save_figure, share_chart
from dapt_core.imageio import image_to_array, load_image
from dapt_core.viz.overlay import heatmap_overlay, outline, split_panel

log = logging.getLogger("dapt_app")

# --- constants --------------------------------------------------------------------------------------------
TITLE = "DAPT attention explorer"
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 7860
MAX_UPLOAD = "200mb"  # Gradio refuses bigger files before they reach a handler
MAX_IMAGE_PIXELS = 25_000_000  # width * height of an image to analyse
MAX_COMPARED_SETS = 6  # prompt sets in one comparison
DISPLAY_SIDE_PX = 512  # overlays are sent to the browser at most this large
COMPARE_CONCURRENCY = {"cpu": 2, "cuda": 4}  # comparisons running at once; they share the model's lock anyway
TRAIN_WATCHERS = 8  # visitors whose training progress streams at once (one job trains, the others wait)
PROGRESS_INTERVAL_S = 0.5  # how often a training watcher redraws
QUEUE_MAX_SIZE = 64  # requests waiting in Gradio's queue before new ones are turned away
SOURCES = [("the synthetic shapes task (exact masks)", "synthetic"), ("a zip with one folder per class", "zip"),
           ("images added below, class by class", "images")]


def _guard(fn: Callable) -> Callable:
    """Shows a user's mistake as a plain ``gr.Error``; logs anything else with its traceback."""
    def translate(err: Exception) -> gr.Error:
        if isinstance(err, gr.Error):
            return err
        if isinstance(err, (ValueError, KeyError, FileNotFoundError, support.QueueFullError)):
            log.warning("%s refused: %s", fn.__name__, err)
            return gr.Error(str(err.args[0]) if isinstance(err, KeyError) else str(err), print_exception=False)
        log.exception("%s failed", fn.__name__)
        return gr.Error("Something went wrong on the server; the details are in its log.", print_exception=False)

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as err:
                raise translate(err) from err
        return stream

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            raise translate(err) from err
    return call


def _upload_path(value: Any) -> Path | None:
    """The server path of a file input, whether Gradio preprocessed it (str) or not (FileData dict)."""
    if value is None or value == "":
        return None
    return Path(value["path"] if isinstance(value, dict) else value)


def _load_picture(image: Any) -> tuple[PIL.Image.Image, str, Path]:
    """The upload as RGB PIL, the name the visitor knows it by and its server path; ImageInputError if unreadable."""
    path = _upload_path(image)
    if path is None:
        raise ValueError("Upload an image (or pick an example) first.")
    name = (image.get("orig_name") if isinstance(image, dict) else None) or path.name
    return load_image(path, max_pixels=MAX_IMAGE_PIXELS, name=name), name, path


def _shrink(pixels: np.ndarray) -> np.ndarray:
    """At most DISPLAY_SIDE_PX on the long side, for the browser."""
    scale = DISPLAY_SIDE_PX / max(pixels.shape[:2])
    if scale >= 1:
        return pixels
    return cv2.resize(pixels, (round(pixels.shape[1] * scale), round(pixels.shape[0] * scale)),
                      interpolation=cv2.INTER_AREA)


def _pct(share: float | None) -> str:
    return "n/a" if share is None or share != share else f"{share:.0%}"


class Handlers:
    """Everything the UI calls; one instance is shared by every visitor (per-visitor state is in gr.State)."""

    def __init__(self, backbone: Backbone, catalog: support.PromptCatalog, examples: support.Examples) -> None:
        self.backbone = backbone
        self.catalog = catalog
        self.examples = examples
        self.files = support.TempFiles()
        self.queue = support.TrainingQueue(self._run_job, max_waiting=TRAIN_WATCHERS)
        self.segmenters = support.SegmenterMenu(exact_masks=any(e.mask for e in examples.items))

    # --- compare ------------------------------------------------------------------------------------------
    def suggest_segmenter(self, image: Any, segmenter: str) -> str:
        """An example image that comes with its exact object mask is measured against that mask."""
        path = _upload_path(image)
        try:
            exact = path is not None and self.examples.exact_mask(path) is not None
        except OSError:
            exact = False
        if exact:
            return support.EXACT
        return "cam" if segmenter == support.EXACT else segmenter

    @_guard
    def segmenter_note(self, image: Any, segmenter: str) -> str:
        """What the chosen segmenter does, why it cannot run, or (SAM) what it will cost on this image."""
        wants_cost = segmenter == "sam" and _upload_path(image) is not None
        return self.segmenters.note(segmenter, image_to_array(_load_picture(image)[0]) if wants_cost else None)

    @_guard
    def compare(self, image: Any, set_keys: list[str] | None, classes: str, segmenter: str, cam_method: str,
                target: str) -> tuple:
        """Runs every chosen prompt set on the image; returns the split, overlays, table, chart, figure, JSON."""
        picture, shown_name, path = _load_picture(image)
        set_keys = list(set_keys or [])
        if not set_keys:
            raise ValueError("Pick at least one prompt set (two or more to compare them).")
        if len(set_keys) > MAX_COMPARED_SETS:
            raise ValueError(f"Pick at most {MAX_COMPARED_SETS} prompt sets at a time.")
        try:
            names = support.parse_classnames(classes)
        except ValueError as err:
            raise ValueError(f"Classes: {err}") from err
        if names is None and len({tuple(self.catalog.get(k).info.meta["classnames"]) for k in set_keys}) > 1:
            raise ValueError("These prompt sets were trained on different class lists; type one class list "
                             "(comma-separated) for all of them.")
        learners = [(self.catalog.get(k).info.name, self.catalog.learner(k, names)) for k in set_keys]
        mask = self.examples.exact_mask(path) if segmenter == support.EXACT else None
        if segmenter == support.EXACT and mask is None:
            raise ValueError("Only the example images come with an exact mask; pick another segmenter.")
        result = analyze(picture, learners, segmenter=self.segmenters.get(segmenter), mask=mask,
                         cam_method=cam_method, target=(target or "").strip() or None, max_pixels=MAX_IMAGE_PIXELS)
        image_px, mask = _shrink(result.image), result.mask  # the mask used: exact, segmented or none
        small_mask = None if mask is None else _shrink(mask.astype(np.uint8) * 255) > 127
        split = split_panel(image_px, small_mask) if mask is not None else image_px
        gallery, rows = [], []
        for r in result.results:
            overlay = heatmap_overlay(image_px, _shrink(r.cam))
            if small_mask is not None:
                overlay = outline(overlay, small_mask)
            gallery.append((overlay, f"{r.name}: on-object {_pct(r.object_share)}"))
            top5 = " · ".join(f"{c} {p:.0%}" for c, p in r.top5)
            hit = "" if r.pointing_hit is None else ("yes" if r.pointing_hit else "no")
            rows.append([r.name, r.label, _pct(r.object_share), hit, r.target, top5])
        shares = [r.object_share for r in result.results]
        chart = None
        if mask is not None:
            chart = figure_to_array(share_chart([r.name for r in result.results],
                                                [None if s is None or s != s else s for s in shares]))
        figure = save_figure(result.figure(title=f"{shown_name}: {', '.join(n for n, _ in learners)}"),
                             self.files.new_dir() / "dapt-comparison.png")
        summary = {**result.to_json(), "prompt_set_keys": set_keys}
        return split, gallery, rows, chart, str(figure), summary

    # --- training -----------------------------------------------------------------------------------------
    def _run_job(self, job: support.TrainJob) -> support.TrainResult:
        request, workdir = job.request

        def on_step(report) -> None:
            job.add_step({"epoch": report.epoch, "step": report.step, "steps": report.steps_per_epoch,
                          "lr": report.lr, **report.losses})

        return support.run_training(request, self.backbone, self.catalog, workdir, on_step=on_step,
                                    cancel=job.cancel, status=lambda message: job.update(message=message))

    @_guard
    def add_images(self, files: list | None, classname: str, folder: str | None) -> tuple[str, str]:
        """Adds uploaded images under a class name to this visitor's image folder (kept in gr.State)."""
        root = Path(folder) if folder else self.files.new_dir() / "images"
        paths = [p for p in (_upload_path(f) for f in files or []) if p is not None]
        support.add_labelled_images(paths, classname, root)
        return str(root), self._folder_summary(root)

    def _folder_summary(self, root: Path) -> str:
        counts = support.describe_folder(root)
        return ("Images so far: " + ", ".join(f"**{c}** ({n})" for c, n in counts.items())) if counts else \
            "No images added yet."

    @_guard
    def clear_images(self) -> tuple[None, str]:
        return None, "No images added yet."

    @_guard
    def train(self, source: str, zip_file: Any, learner: str, cue: str, shots: float, epochs: float, name: str,
              seed: float, folder: str | None, request: gr.Request) -> Iterator[tuple]:
        """Queues a training job and streams its place in line, progress, losses and the saved prompt set."""
        workdir = self.files.new_dir()
        data = None
        if source == "zip":
            archive = _upload_path(zip_file)
            if archive is None:
                raise ValueError("Upload a zip with one folder of images per class first.")
            data = support.extract_labelled_zip(archive, workdir / "images")
        elif source == "images":
            data = Path(folder) if folder else None
        elif source != "synthetic":
            raise ValueError(f"unknown data source {source!r}; choose from synthetic, zip, images")
        shots, epochs = int(shots), int(epochs)
        req = support.TrainRequest(source="synthetic" if source == "synthetic" else "folder", learner=learner,
                                   cue=cue, shots=shots, epochs=epochs, folder=data, seed=int(seed),
                                   name=(name or "").strip() or f"{learner}-{cue}-{shots}shot")
        req.validate()
        owner = getattr(request, "session_hash", None) or "anonymous"
        job = self.queue.submit(owner, (req, workdir))
        view, shown = job.snapshot(), -1
        try:
            while True:
                if view.version != shown or view.state == "waiting":  # the place in line moves on its own
                    yield self._progress(job, view)
                    shown = view.version
                if view.finished:
                    break
                time.sleep(PROGRESS_INTERVAL_S)  # at most two redraws a second, however fast the steps
                job.wait(view.version, PROGRESS_INTERVAL_S)
                view = job.snapshot()
        finally:
            if not view.finished:  # the visitor left: nobody will see the result
                job.cancel.set()
        if view.state == "failed":
            raise ValueError(view.error)

    def _progress(self, job: support.TrainJob, view: support.JobView) -> tuple:
        if view.state == "waiting":
            ahead = self.queue.position(job)
            text = f"Waiting for the trainer: **{ahead}** job(s) ahead of yours." if ahead else "Starting…"
            return text, None, None, None
        plot = figure_to_array(support.loss_figure(view.steps)) if view.steps else None
        if view.state == "done":
            result: support.TrainResult = view.result
            download = self.files.new_dir() / result.path.name
            shutil.copyfile(result.path, download)
            metrics = {**result.metrics, "evaluation": result.note, "key": result.key}
            text = (f"Saved **{result.key}** ({len(result.classnames)} classes). It is listed in the compare tab "
                    f"now. {result.note}.")
            return text, plot, metrics, str(download)
        line = view.message
        if view.steps and view.state == "running":
            s = view.steps[-1]
            line += (f"\n\nEpoch {s['epoch'] + 1}/{job.request[0].epochs}, step {s['step'] + 1}/{s['steps']}, "
                     f"loss {s.get('total', float('nan')):.4f}")
        return line, plot, None, None

    @_guard
    def cancel(self, request: gr.Request) -> str:
        """Cancels this visitor's training job(s), waiting or running."""
        n = self.queue.cancel(getattr(request, "session_hash", None) or "anonymous")
        return "Cancelling…" if n else "No training job of yours is waiting or running."

    # --- model and prompts --------------------------------------------------------------------------------
    @_guard
    def prompt_sets(self) -> list[dict]:
        """The prompt sets that fit the loaded backbone, with their metadata."""
        return [entry.summary() for entry in self.catalog.entries()]

    @_guard
    def refresh(self, selected: list[str] | None) -> tuple:
        """Re-reads the catalogue: prompt-set choices (keeping what is still there), table, download list."""
        entries = self.catalog.entries()
        keys = [e.key for e in entries]
        kept = [k for k in (selected or []) if k in keys] or self.catalog.default_keys(entries)
        choices = [(e.display, e.key) for e in entries]
        return (gr.update(choices=choices, value=kept), [e.row() for e in entries],
                gr.update(choices=choices, value=keys[0] if keys else None), self.prompt_sets())

    @_guard
    def upload_prompt_set(self, upload: Any) -> str:
        """Checks an uploaded .safetensors prompt set against the backbone and adds it to the user folder."""
        path = _upload_path(upload)
        if path is None:
            raise ValueError("Choose a .safetensors prompt set to upload.")
        original = upload.get("orig_name") if isinstance(upload, dict) else None
        entry = self.catalog.install(path, original or path.name)
        return f"Added **{entry.key}** ({entry.info.label}, {len(entry.info.meta['classnames'])} classes)."

    @_guard
    def download_prompt_set(self, key: str | None) -> str:
        """A copy of a prompt set's file, to download."""
        if not key:
            raise ValueError("Pick a prompt set to download.")
        source = self.catalog.get(key).info.path
        target = self.files.new_dir() / source.name
        shutil.copyfile(source, target)
        return str(target)


def _describe(backbone: Backbone) -> str:
    return "\n".join(f"- **{k}**: {v}" for k, v in backbone.describe().items())


def build_app(backbone: Backbone | None, *, banner: str | None = None, error: str | None = None,
              bundled_dir: Path = support.BUNDLED_PROMPT_DIR, user_dir: Path = support.USER_PROMPT_DIR,
              examples_dir: Path | None = None) -> gr.Blocks:
    """The whole UI around one shared backbone; without one, a page that says what to do."""
    if backbone is None:
        with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
            gr.Markdown(f"# {TITLE}\n\n{error or 'No backbone is loaded.'}")
        return demo
    examples = support.Examples(examples_dir or support.example_dir_for(backbone))
    h = Handlers(backbone, support.PromptCatalog(backbone, bundled_dir, user_dir), examples)
    entries = h.catalog.entries()
    set_choices = [(e.display, e.key) for e in entries]
    with gr.Blocks(title=TITLE, delete_cache=(3600, 6 * 3600), analytics_enabled=False) as demo:
        gr.Markdown(f"# {TITLE}\nDAPT (*Decouple before Align*) tunes CLIP's prompts so that attention moves from "
                    "the background to the object. Compare prompt sets, tune your own, exchange them.")
        if banner:
            gr.Markdown(f"> ⚠️ {banner}", elem_id="banner")
        with gr.Tab("Compare attention"):
            with gr.Row():
                with gr.Column(scale=1):
                    image = gr.Image(type="filepath", image_mode=None, label="Image", height=320,
                                     elem_id="compare-image")
                    if h.examples.items:
                        gr.Examples([[str(e.image)] for e in h.examples.items], inputs=[image], cache_examples=False,
                                    example_labels=[e.label for e in h.examples.items], examples_per_page=12)
                    sets = gr.CheckboxGroup(set_choices, value=h.catalog.default_keys(entries), label="Prompt sets",
                                            info="two or more, e.g. CoOp and CoOp + DAPT")
                    classes = gr.Textbox("", label="Classes", placeholder="empty: the list stored with the prompt sets",
                                         info="or a comma-separated list, e.g. cat, dog, car")
                    with gr.Accordion("Options", open=False):
                        segmenter = gr.Radio(h.segmenters.choices(), value="cam", label="Foreground segmenter")
                        seg_note = gr.Markdown(h.segmenters.note("cam"))
                        cam_method = gr.Radio(list(CAM_METHODS), value="gradcam", label="CAM method")
                        target = gr.Textbox("", label="Explain class", placeholder="empty: each set's top prediction")
                    run = gr.Button("Compare", variant="primary", elem_id="compare-run")
                with gr.Column(scale=2):
                    with gr.Row():
                        split = gr.Image(label="Foreground / background split", format="png", interactive=False,
                                         scale=3, height=220)
                        chart = gr.Image(label="Attention on the object", format="png", interactive=False,
                                         scale=2, height=220, show_label=False)
                    gallery = gr.Gallery(label="Attention per prompt set", columns=3, format="png", height="auto",
                                         elem_id="compare-gallery")
                    table = gr.Dataframe(headers=["prompt set", "method", "on object", "peak on object",
                                                  "explains", "top-5"], label="Predictions", wrap=True,
                                         column_widths=["15%", "17%", "10%", "10%", "12%", "36%"])
                    figure = gr.File(label="Comparison figure (PNG)")
                    with gr.Accordion("Raw results (JSON)", open=False):
                        summary = gr.JSON(label="Results")
            image.change(h.suggest_segmenter, [image, segmenter], segmenter, api_visibility="private",
                         preprocess=False, show_progress="hidden")
            for trigger in (image.change, segmenter.change):
                trigger(h.segmenter_note, [image, segmenter], seg_note, api_visibility="private",
                        preprocess=False, show_progress="hidden")
            run.click(h.compare, [image, sets, classes, segmenter, cam_method, target],
                      [split, gallery, table, chart, figure, summary], api_name="compare", preprocess=False,
                      concurrency_limit=COMPARE_CONCURRENCY.get(backbone.device.type, 1), concurrency_id="compare")
        with gr.Tab("Few-shot tuning"):
            folder = gr.State(None)
            with gr.Row():
                with gr.Column(scale=1):
                    source = gr.Radio(SOURCES, value="synthetic", label="Labelled images")
                    zip_file = gr.File(label="Zip: one folder of images per class", file_types=[".zip"], visible=False)
                    with gr.Accordion("Add images class by class", visible=False) as by_class:
                        files = gr.File(label="Images of one class", file_count="multiple", file_types=["image"])
                        classname = gr.Textbox("", label="Class of these images")
                        with gr.Row():
                            add = gr.Button("Add to my images")
                            clear = gr.Button("Start over")
                        folder_note = gr.Markdown("No images added yet.")
                    learner = gr.Radio(["coop", "maple"], value="coop", label="Prompt learner")
                    cue = gr.Radio(["off", "gradcam", "mask"], value="gradcam", label="DAPT cue",
                                   info="off: plain learner; mask: exact masks, synthetic task only")
                    shots = gr.Slider(1, 16, value=1, step=1, label="Shots per class")
                    epochs = gr.Slider(1, 20, value=2, step=1, label="Epochs")
                    name = gr.Textbox("", label="Name of the new prompt set", placeholder="e.g. my-pets-dapt")
                    seed = gr.Number(1, precision=0, label="Seed")
                    with gr.Row():
                        train = gr.Button("Train", variant="primary")
                        stop = gr.Button("Cancel", variant="stop")
                with gr.Column(scale=1):
                    status = gr.Markdown("Training runs one job at a time; others wait in line.", label="Status")
                    losses = gr.Image(label="Losses", format="png", interactive=False)
                    metrics = gr.JSON(label="Held-out evaluation")
                    trained = gr.File(label="The trained prompt set")
            source.change(lambda s: (gr.update(visible=s == "zip"), gr.update(visible=s == "images")), source,
                          [zip_file, by_class], api_visibility="private", show_progress="hidden")
            add.click(h.add_images, [files, classname, folder], [folder, folder_note], api_visibility="private",
                      preprocess=False)
            clear.click(h.clear_images, None, [folder, folder_note], api_visibility="private")
        with gr.Tab("Model and prompts"):
            gr.Markdown("### Loaded backbone\n" + _describe(backbone))
            catalog_table = gr.Dataframe([e.row() for e in entries], headers=support.CATALOG_HEADERS,
                                         label="Prompt sets for this backbone", wrap=True)
            listing = gr.JSON(label="Prompt-set metadata", open=False)
            refresh = gr.Button("Refresh")
            with gr.Row():
                with gr.Column():
                    upload = gr.File(label="Upload a prompt set (.safetensors)", file_types=[".safetensors"])
                    upload_note = gr.Markdown(label="Upload status")
                with gr.Column():
                    pick = gr.Dropdown(set_choices, value=set_choices[0][1] if set_choices else None,
                                       label="Download a prompt set")
                    fetch = gr.Button("Prepare download")
                    download = gr.File(label="Prompt set file")
        lists = [sets, catalog_table, pick, listing]
        train.click(h.train, [source, zip_file, learner, cue, shots, epochs, name, seed, folder],
                    [status, losses, metrics, trained], api_name="train", preprocess=False,
                    concurrency_limit=TRAIN_WATCHERS, concurrency_id="train"
                    ).then(h.refresh, [sets], lists, api_visibility="private")
        stop.click(h.cancel, None, status, api_name="cancel_training", queue=False)
        refresh.click(h.prompt_sets, None, listing, api_name="prompt_sets"
                      ).then(h.refresh, [sets], lists, api_visibility="private")
        upload.upload(h.upload_prompt_set, [upload], upload_note, api_name="upload_prompt_set", preprocess=False
                      ).then(h.refresh, [sets], lists, api_visibility="private")
        fetch.click(h.download_prompt_set, [pick], download, api_name="download_prompt_set", preprocess=False)
        demo.load(h.refresh, [sets], lists, api_visibility="private")
    return demo


def launch(demo: gr.Blocks, *, host: str, port: int, share: bool = False, **kwargs) -> Any:
    """Starts the queue and the server with the app's limits."""
    demo.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=2)
    return demo.launch(server_name=host, server_port=port, share=share, max_file_size=MAX_UPLOAD,
                       footer_links=["api", "gradio"], **kwargs)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", DEFAULT_HOST))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", DEFAULT_PORT)))
    parser.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    parser.add_argument("--backbone", default=os.environ.get("DAPT_BACKBONE") or None,
                        help="force a backbone, e.g. tiny-vit (default: ViT-B-16, else synth-mini)")
    parser.add_argument("--device", default=None, help="torch device (default: the GPU when there is one)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args()
    if os.environ.get("SPACE_ID"):
        log.info("running on the Hugging Face Space %s: the real weights are fetched if needed",
                 os.environ["SPACE_ID"])
    choice = support.choose_backbone(args.backbone, device=args.device)
    app = build_app(choice.backbone, banner=choice.banner, error=choice.error)
    launch(app, host=args.host, port=args.port, share=args.share)
