"""What the Gradio app needs besides widgets: the start-up backbone, the prompt-set catalogue, safe uploads, and
a one-at-a-time training queue with progress and cancel.

Nothing here imports gradio; ``app.py`` turns the errors raised here (``ValueError`` subclasses whose messages
are meant for the user) into ``gr.Error``. The objects built here are shared by every visitor of one app, so
each guards its own state with a lock.
"""

from dapt_core.app_support.catalog import CATALOG_HEADERS, CatalogEntry, PromptCatalog
from dapt_core.app_support.jobs import JobView, QueueFullError, TrainingQueue, TrainJob, loss_figure
from dapt_core.app_support.segmenters import EXACT, SegmenterMenu
from dapt_core.app_support.startup import (
    BUNDLED_PROMPT_DIR,
    EXAMPLE_DIR,
    PHOTO_DIR,
    FETCH_COMMAND,
    USER_PROMPT_DIR,
    BackboneChoice,
    Example,
    Examples,
    TempFiles,
    choose_backbone,
    example_dir_for,
    parse_classnames,
)
from dapt_core.app_support.training import TrainRequest, TrainResult, dapt_config, run_training
from dapt_core.app_support.uploads import (
    UploadError,
    UploadLimits,
    add_labelled_images,
    check_image_folder,
    describe_folder,
    extract_labelled_zip,
    slugify,
)

__all__ = [
    "BUNDLED_PROMPT_DIR", "BackboneChoice", "CATALOG_HEADERS", "CatalogEntry", "EXACT", "EXAMPLE_DIR",
    "Example", "Examples", "FETCH_COMMAND", "JobView", "PHOTO_DIR", "PromptCatalog", "QueueFullError",
    "SegmenterMenu", "TempFiles", "TrainJob", "TrainRequest", "TrainResult", "TrainingQueue", "USER_PROMPT_DIR",
    "UploadError", "UploadLimits", "add_labelled_images", "check_image_folder", "choose_backbone",
    "dapt_config", "describe_folder", "example_dir_for", "extract_labelled_zip", "loss_figure",
    "parse_classnames", "run_training", "slugify",
]
