"""DAPT attention explorer: where do learned prompts make CLIP look, and does DAPT move it onto the object?

A thin Gradio shell over ``dapt_core``: compare prompt sets on an image, tune prompts on a few labelled images,
see and exchange prompt sets. ``python app.py`` serves on 127.0.0.1:7860 (``--host``, ``--port``, ``--share``,
``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``); ``--backbone NAME`` or ``DAPT_BACKBONE`` forces a backbone.
The work is done by ``dapt_core.app_support``; this file only lays out the page and wires it to that.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator

from dapt_core.space import prepare_space

# First of all: on a Hugging Face Space, visitors' prompt sets and the weights cache go to its persistent
# storage (variables that gradio's and the library's imports read) and ZeroGPU's package is imported early.
SPACE = prepare_space()

import gradio as gr  # noqa: E402

from dapt_core import app_support as support  # noqa: E402
from dapt_core.app_support import zerogpu  # noqa: E402
from dapt_core.attention.descriptions import DEFAULT_METHOD, best_measured_method, method_choices  # noqa: E402
from dapt_core.backbones import Backbone  # noqa: E402
from dapt_core.learners import list_learners  # noqa: E402
from dapt_core.objective import CUES  # noqa: E402

log = logging.getLogger("dapt_app")

# --- constants --------------------------------------------------------------------------------------------
TITLE = "DAPT attention explorer"
INTRO = ("DAPT (*Decouple before Align*) tunes CLIP's prompts so that attention moves from the background to the "
         "object. Compare prompt sets, tune your own, exchange them.")
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 7860
MAX_UPLOAD = "200mb"  # Gradio refuses bigger files before they reach a handler
# width * height of an image to analyse, below constants.MAX_IMAGE_PIXELS (what the reader decodes at all): a
# comparison keeps the picture, a CAM per prompt set and the overlays in memory beside other visitors' ones
MAX_ANALYSIS_PIXELS = 25_000_000
MAX_COMPARED_SETS = 6  # prompt sets in one comparison
DISPLAY_SIDE_PX = 512  # pictures are sent to the browser at most this large
COMPARE_CONCURRENCY = {"cpu": 2, "cuda": 4}  # comparisons running at once; they share the model's lock anyway
TRAIN_WATCHERS = 8  # visitors whose training progress streams at once (one job trains, the others wait)
PROGRESS_INTERVAL_S = 0.5  # how often a training watcher redraws
QUEUE_MAX_SIZE = 64  # requests waiting in Gradio's queue before new ones are turned away
GRADIO_CACHE_S = (3600, 6 * 3600)  # Gradio's copies of uploads: checked hourly, deleted after six hours
SOURCES = [("the synthetic shapes task (exact masks)", "synthetic"), ("a zip with one folder per class", "zip"),
           ("images added below, class by class", "images")]
SYNTHETIC_LABELS = {"web": "the web world's rehomed task (24 classes, exact masks)",
                    "synth": "the synthetic shapes task (exact masks)"}  # the "synthetic" source, by its world
SETS_INFO = "two or more, e.g. CoOp and CoOp + DAPT"
NO_SETS_INFO = ("no prompt set for this backbone yet: train one under Few-shot tuning, or upload one under Model and "
                "prompts")
PRIVATE = {"api_visibility": "private"}  # events of the page itself, not offered through the API
QUIET = {**PRIVATE, "show_progress": "hidden"}  # ... that redraw a part of the page without a spinner


# --- handlers ---------------------------------------------------------------------------------------------
def _guard(fn: Callable) -> Callable:
    """Shows a visitor's mistake as a plain ``gr.Error``; logs anything else with its traceback."""
    return support.guarded(fn, lambda message: gr.Error(message, print_exception=False), keep=(gr.Error,),
                           logger=log)


class Handlers(support.AppServices):
    """Everything the UI calls; one instance serves every visitor (per-visitor state is in gr.State). The
    library's handlers take and return plain values; the four here need Gradio's progress, request or updates."""

    def __init__(self, backbone: Backbone, catalog: support.PromptCatalog, examples: support.Examples) -> None:
        super().__init__(backbone, catalog, examples, max_waiting=TRAIN_WATCHERS, redraw_s=PROGRESS_INTERVAL_S,
                         limits=support.CompareLimits(MAX_COMPARED_SETS, MAX_ANALYSIS_PIXELS, DISPLAY_SIDE_PX))
        zerogpu.attach(self)  # on ZeroGPU a GPU is attached only inside the model's calls

    def make_masks(self, source: str, zip_file: Any, folder: str | None, segmenter: str,
                   progress: gr.Progress = gr.Progress()) -> tuple[list, str]:
        """The masks of the visitor's images for the mask cue, made with progress, as a gallery to review."""
        return self.masks_for_form(source, zip_file, folder, segmenter,
                                   lambda done, total: progress(done / total, desc=f"mask {done}/{total}"))

    def train(self, source: str, zip_file: Any, learner: str, cue: str, shots: float, epochs: float, name: str,
              seed: float, folder: str | None, request: gr.Request, mask_segmenter: str | None = None,
              cue_method: str | None = None) -> Iterator[support.TrainProgress]:
        """Queues a training job and streams its place in line, progress, losses and the saved prompt set."""
        yield from self.train_from_form(request, source, zip_file, learner, cue, shots, epochs, name, seed, folder,
                                        mask_segmenter, cue_method)

    def cancel(self, request: gr.Request) -> str:
        """Cancels this visitor's training job(s), waiting or running."""
        return self.cancel_training(request)

    def refresh(self, selected: list[str] | None) -> tuple:
        """Re-reads the catalogue: prompt-set choices (keeping what is still there), table, download list."""
        view = self.catalog.view(selected)
        return (gr.update(choices=view.choices, value=view.selected, info=_sets_info(view)), view.rows,
                gr.update(choices=view.choices, value=view.first_key), view.summaries)


# every handler the page calls, except suggest_segmenter (it catches its own errors)
GUARDED = ("segmenter_note", "example_note", "suggest_target", "compare", "add_images", "make_masks", "clear_images",
           "train", "cancel", "prompt_sets", "refresh", "upload_prompt_set", "download_prompt_set")
for _name in GUARDED:
    setattr(Handlers, _name, _guard(getattr(Handlers, _name)))


# --- the page: one function per tab -----------------------------------------------------------------------
def _sets_info(view: support.CatalogView) -> str:
    return SETS_INFO if view.choices else NO_SETS_INFO


def _output_image(label: str, **kwargs: Any) -> gr.Image:
    return gr.Image(label=label, format="png", interactive=False, **kwargs)


def _compare_tab(h: Handlers, listed: support.CatalogView, device: str) -> gr.CheckboxGroup:
    """Picture, prompt sets and options on the left, what they see on the right; returns the set picker."""
    with gr.Row():
        with gr.Column(scale=1):
            image = gr.Image(type="filepath", image_mode=None, label="Image", height=320, elem_id="compare-image")
            if h.examples.items:
                gr.Examples([[str(e.image)] for e in h.examples.items], inputs=[image], cache_examples=False,
                            example_labels=[e.label for e in h.examples.items], examples_per_page=12)
            sets = gr.CheckboxGroup(listed.choices, value=listed.selected, label="Prompt sets",
                                    info=_sets_info(listed))
            classes = gr.Textbox("", label="Classes", placeholder="empty: the list stored with the prompt sets",
                                 info="or a comma-separated list, e.g. cat, dog, car")
            with gr.Accordion("Options", open=False):
                segmenter = gr.Radio(h.segmenters.choices(), value="cam", label="Foreground segmenter")
                seg_note = gr.Markdown(h.segmenters.note("cam"))
                measured = h.examples.cam_method in {key for _, key in method_choices()}
                cam_method = gr.Dropdown(method_choices(), label="Attribution method",
                                         value=h.examples.cam_method if measured else best_measured_method(),
                                         info="default: the map the examples' numbers were measured with"
                                         if measured else "default: the best pointing game measured (docs/results)")
                target = gr.Textbox("", label="Explain class", placeholder="empty: each set's top prediction")
            run = gr.Button("Compare", variant="primary", elem_id="compare-run")
        with gr.Column(scale=2):
            example_note = gr.Markdown("", elem_id="example-note")  # a picked example's own numbers, if it has any
            with gr.Row():
                split = _output_image("Foreground / background split", scale=3, height=220)
                chart = _output_image("Attention on the object", scale=2, height=220, show_label=False)
            gallery = gr.Gallery(label="Attention per prompt set", columns=3, format="png", height="auto",
                                 elem_id="compare-gallery")
            table = gr.Dataframe(headers=support.TABLE_HEADERS, label="Predictions", wrap=True,
                                 column_widths=support.TABLE_WIDTHS)
            figure = gr.File(label="Comparison figure (PNG)")
            with gr.Accordion("Raw results (JSON)", open=False):
                summary = gr.JSON(label="Results")
    image.change(h.suggest_segmenter, [image, segmenter], segmenter, preprocess=False, **QUIET)
    image.change(h.example_note, image, example_note, preprocess=False, **QUIET)
    image.change(h.suggest_target, [image, target], target, preprocess=False, **QUIET)
    for trigger in (image.change, segmenter.change):
        trigger(h.segmenter_note, [image, segmenter], seg_note, preprocess=False, **QUIET)
    run.click(h.compare, [image, sets, classes, segmenter, cam_method, target],
              [split, gallery, table, chart, figure, summary], api_name="compare", preprocess=False,
              concurrency_limit=COMPARE_CONCURRENCY.get(device, 1), concurrency_id="compare")
    return sets


def _tuning_tab(h: Handlers) -> tuple[gr.Button, gr.Button, list, list]:
    """The labelled images and settings on the left, progress on the right; returns the train and cancel
    buttons with the training inputs and outputs (wired once the lists it refreshes exist)."""
    folder = gr.State(None)  # this visitor's image folder, as images are added class by class
    with gr.Row():
        with gr.Column(scale=1):
            world = support.synthetic_world(h.backbone)
            choices = [(SYNTHETIC_LABELS[world], "synthetic"), *SOURCES[1:]]
            source = gr.Radio(choices, value="synthetic", label="Labelled images")
            zip_file = gr.File(label="Zip: one folder of images per class", file_types=[".zip"], visible=False)
            with gr.Accordion("Add images class by class", visible=False) as by_class:
                files = gr.File(label="Images of one class", file_count="multiple", file_types=["image"])
                classname = gr.Textbox("", label="Class of these images")
                with gr.Row():
                    add, clear = gr.Button("Add to my images"), gr.Button("Start over")
                folder_note = gr.Markdown(support.NO_IMAGES_YET)
            learner = gr.Radio(list_learners(), value="coop", label="Prompt learner")
            cue = gr.Radio(list(CUES), value="gradcam", label="DAPT cue",
                           info="off: plain learner; mask: the synthetic task's exact masks, or for your "
                                "images the masks made below")
            cue_method = gr.Dropdown(method_choices(), value=DEFAULT_METHOD, label="Attribution method of the cue",
                                     info="the map that makes the gradcam cue's coarse masks (official: gradcam)")
            with gr.Accordion("Masks of your images (mask cue)", visible=False) as mask_box:
                mask_segmenter = gr.Radio(h.user_masks.choices(), value=next(iter(h.user_masks.choices()), None),
                                          label="Segmenter", info="SAM where its weights are here, else GrabCut; "
                                          "seeded by the best measured attribution map")
                make = gr.Button("Make masks")
                mask_note = gr.Markdown("Make the masks, check them, then train.")
                mask_gallery = gr.Gallery(label="Masks to review", columns=4, format="png", height="auto")
            shots = gr.Slider(1, 16, value=1, step=1, label="Shots per class")
            epochs = gr.Slider(1, 20, value=2, step=1, label="Epochs")
            name = gr.Textbox("", label="Name of the new prompt set", placeholder="e.g. my-pets-dapt")
            seed = gr.Number(1, precision=0, label="Seed")
            with gr.Row():
                train, stop = gr.Button("Train", variant="primary"), gr.Button("Cancel", variant="stop")
        with gr.Column(scale=1):
            status = gr.Markdown("Training runs one job at a time; others wait in line.", label="Status")
            losses = _output_image("Losses")
            metrics, trained = gr.JSON(label="Held-out evaluation"), gr.File(label="The trained prompt set")
    source.change(lambda s: (gr.update(visible=s == "zip"), gr.update(visible=s == "images")), source,
                  [zip_file, by_class], **QUIET)
    add.click(h.add_images, [files, classname, folder], [folder, folder_note], preprocess=False, **PRIVATE)
    clear.click(h.clear_images, None, [folder, folder_note], **PRIVATE)
    for trigger in (source.change, cue.change):
        trigger(lambda s, c: gr.update(visible=s != "synthetic" and c == "mask"), [source, cue], mask_box, **QUIET)
    make.click(h.make_masks, [source, zip_file, folder, mask_segmenter], [mask_gallery, mask_note],
               api_name="make_masks", preprocess=False)
    inputs = [source, zip_file, learner, cue, shots, epochs, name, seed, folder, mask_segmenter, cue_method]
    return train, stop, inputs, [status, losses, metrics, trained]


def _prompts_tab(backbone: Backbone, listed: support.CatalogView) -> tuple:
    """The backbone, the prompt-set table and metadata, upload and download; returns the components to wire."""
    gr.Markdown("### Loaded backbone\n" + support.describe_backbone(backbone))
    table = gr.Dataframe(listed.rows, headers=support.CATALOG_HEADERS, label="Prompt sets for this backbone",
                         wrap=True)
    listing, refresh = gr.JSON(label="Prompt-set metadata", open=False), gr.Button("Refresh")
    with gr.Row():
        with gr.Column():
            upload = gr.File(label="Upload a prompt set (.safetensors)", file_types=[".safetensors"])
            upload_note = gr.Markdown(label="Upload status")
        with gr.Column():
            pick = gr.Dropdown(listed.choices, value=listed.first_key, label="Download a prompt set")
            fetch, download = gr.Button("Prepare download"), gr.File(label="Prompt set file")
    return table, listing, refresh, upload, upload_note, pick, fetch, download


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
    h.catalog.preferred = examples.prompt_pair or ()  # the examples' numbers are this pair's: show it first
    listed = h.catalog.view()
    with gr.Blocks(title=TITLE, delete_cache=GRADIO_CACHE_S, analytics_enabled=False) as demo:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        if banner:
            gr.Markdown(f"> ⚠️ {banner}", elem_id="banner")
        with gr.Tab("Compare attention"):
            sets = _compare_tab(h, listed, backbone.device.type)
        with gr.Tab("Few-shot tuning"):
            train, stop, train_inputs, train_outputs = _tuning_tab(h)
        with gr.Tab("Model and prompts"):
            table, listing, refresh, upload, upload_note, pick, fetch, download = _prompts_tab(backbone, listed)
        # training and uploads change the prompt-set lists of two tabs, so they are wired once both exist
        def then_refresh(event: Any) -> None:
            event.then(h.refresh, [sets], [sets, table, pick, listing], **PRIVATE)

        then_refresh(train.click(h.train, train_inputs, train_outputs, api_name="train", preprocess=False,
                                 concurrency_limit=TRAIN_WATCHERS, concurrency_id="train"))
        stop.click(h.cancel, None, train_outputs[0], api_name="cancel_training", queue=False)
        then_refresh(refresh.click(h.prompt_sets, None, listing, api_name="prompt_sets"))
        then_refresh(upload.upload(h.upload_prompt_set, [upload], upload_note, api_name="upload_prompt_set",
                                   preprocess=False))
        fetch.click(h.download_prompt_set, [pick], download, api_name="download_prompt_set", preprocess=False)
        demo.load(h.refresh, [sets], [sets, table, pick, listing], **PRIVATE)
    return demo


def launch(demo: gr.Blocks, *, host: str, port: int, share: bool = False, **kwargs: Any) -> Any:
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
                        help="force a backbone, e.g. synth-mini or tiny-vit (default: ViT-B-16, else synth-web, "
                             "else synth-mini)")
    parser.add_argument("--device", default=None, help="torch device (default: the GPU when there is one)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args()
    if SPACE.on_space:
        log.info("%s; the real weights are fetched if needed", SPACE.describe())
    choice = support.choose_backbone(args.backbone, device=args.device)  # the model, loaded once for everyone
    app = build_app(choice.backbone, banner=choice.banner, error=choice.error)
    launch(app, host=args.host, port=args.port, share=args.share)
