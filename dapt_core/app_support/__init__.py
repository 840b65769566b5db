"""What the Gradio app needs besides widgets: the start-up backbone, the prompt-set catalogue, safe uploads, the
comparison and its presentation, and a one-at-a-time training queue with progress and cancel.

Nothing here imports gradio; ``app.py`` turns the errors raised here (``ValueError`` subclasses whose messages
are meant for the user, see :func:`user_message`) into ``gr.Error`` with :func:`guarded`. The objects built
here are shared by every visitor of one app, so each guards its own state with a lock.
"""

from dapt_core.app_support.catalog import CATALOG_HEADERS, CatalogEntry, CatalogView, PromptCatalog, install_note
from dapt_core.app_support.compare import (
    TABLE_HEADERS,
    TABLE_WIDTHS,
    CompareLimits,
    CompareOutputs,
    Comparer,
    format_share,
    load_picture,
    present,
    shrink_for_display,
)
from dapt_core.app_support.errors import (
    DISK_FULL, INTERNAL_ERROR, USER_ERRORS, QueueFullError, disk_full, guarded, user_message,
)
from dapt_core.app_support.jobs import JobView, TrainingQueue, TrainJob, loss_figure
from dapt_core.app_support.leftovers import claim_user_folder, remove_dead_temp_folders
from dapt_core.app_support.segmenters import EXACT, SegmenterMenu
from dapt_core.app_support.services import AppServices
from dapt_core.app_support.startup import (
    BUNDLED_PROMPT_DIR,
    EXAMPLE_DIR,
    FETCH_COMMAND,
    PHOTO_DIR,
    USER_PROMPT_DIR,
    WEB_EXAMPLE_DIR,
    BackboneChoice,
    Example,
    Examples,
    TempFiles,
    choose_backbone,
    describe_backbone,
    example_dir_for,
    parse_classnames,
)
from dapt_core.app_support.trainer import (
    FORM_SOURCES,
    TrainingService,
    TrainProgress,
    progress_text,
    request_from_form,
    step_record,
)
from dapt_core.app_support.training import (
    MAX_EPOCHS, TrainRequest, TrainResult, dapt_config, requested_epochs, run_training, synthetic_world,
)
from dapt_core.app_support.uploads import (
    NO_IMAGES_YET,
    UploadError,
    UploadLimits,
    add_labelled_images,
    check_image_folder,
    describe_folder,
    extract_labelled_zip,
    folder_summary,
    slugify,
    upload_name,
    upload_path,
)

__all__ = [
    "AppServices", "BUNDLED_PROMPT_DIR", "BackboneChoice", "CATALOG_HEADERS", "CatalogEntry", "CatalogView",
    "CompareLimits", "CompareOutputs", "Comparer", "DISK_FULL", "EXACT", "EXAMPLE_DIR", "Example", "Examples",
    "FETCH_COMMAND", "FORM_SOURCES", "INTERNAL_ERROR", "JobView", "MAX_EPOCHS", "NO_IMAGES_YET", "PHOTO_DIR",
    "PromptCatalog", "QueueFullError", "SegmenterMenu", "TABLE_HEADERS", "TABLE_WIDTHS", "TempFiles", "TrainJob",
    "TrainProgress", "TrainRequest", "TrainResult", "TrainingQueue", "TrainingService", "USER_ERRORS",
    "USER_PROMPT_DIR", "UploadError", "UploadLimits", "WEB_EXAMPLE_DIR", "add_labelled_images", "check_image_folder",
    "choose_backbone", "claim_user_folder", "dapt_config", "describe_backbone", "describe_folder", "disk_full",
    "example_dir_for", "extract_labelled_zip", "folder_summary", "format_share", "guarded", "install_note",
    "load_picture", "loss_figure", "parse_classnames", "present", "progress_text", "remove_dead_temp_folders",
    "request_from_form", "requested_epochs", "run_training", "shrink_for_display", "slugify", "step_record",
    "synthetic_world", "upload_name", "upload_path", "user_message"]
