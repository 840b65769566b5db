"""A procedurally generated world of flat-coloured objects on textured backgrounds, with exact masks.

`render_scene` and `generate` make single scenes and data sets; `make_task` builds a few-shot task
whose training backgrounds are a spurious cue; `export_imagefolder` and `export_task` write scenes
for the CLI and `load_scenes` reads them back.
"""

from dapt_core.world.export import (
    METADATA_NAME,
    TASK_SPLITS,
    ImageFolderExport,
    default_mask_root,
    export_imagefolder,
    export_task,
    load_scenes,
    read_mask,
)
from dapt_core.world.shapes import (
    OBJECT_CLASSES,
    ObjectPose,
    PoseConfig,
    UnknownClassError,
    render_object_mask,
    sample_pose,
)
from dapt_core.world.task import SpuriousTask, make_task, spurious_pairing
from dapt_core.world.textures import BACKGROUND_CLASSES, render_background
from dapt_core.world.scenes import (
    BACKGROUND_PHRASES,
    CAPTION_TEMPLATES,
    COLOURS,
    DEFAULT_SCENE_CONFIG,
    MIN_SIZE,
    Scene,
    SceneConfig,
    choose_colour,
    generate,
    iter_scenes,
    make_caption,
    render_scene,
)

__all__ = [
    "BACKGROUND_CLASSES",
    "BACKGROUND_PHRASES",
    "CAPTION_TEMPLATES",
    "COLOURS",
    "DEFAULT_SCENE_CONFIG",
    "METADATA_NAME",
    "MIN_SIZE",
    "OBJECT_CLASSES",
    "ImageFolderExport",
    "ObjectPose",
    "PoseConfig",
    "Scene",
    "SceneConfig",
    "SpuriousTask",
    "TASK_SPLITS",
    "UnknownClassError",
    "choose_colour",
    "default_mask_root",
    "export_imagefolder",
    "export_task",
    "generate",
    "iter_scenes",
    "load_scenes",
    "make_caption",
    "make_task",
    "read_mask",
    "render_background",
    "render_object_mask",
    "render_scene",
    "sample_pose",
    "spurious_pairing",
]
