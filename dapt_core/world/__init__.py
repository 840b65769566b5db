"""A procedurally generated world of flat-coloured objects on textured backgrounds, with exact masks.

`render_scene` and `generate` make single scenes and data sets; `make_task` builds a few-shot task
whose training backgrounds are a spurious cue; `export_imagefolder` and `export_task` write scenes
for the CLI and `load_scenes` reads them back. `dapt_core.world.web` is the web-like world of the `synth-web`
backbone (objects on their home backgrounds, alt-text captions), rendered from a `WebSpec` in separable layers.
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
from dapt_core.world.web import (
    DEFAULT_WEB_CONFIG,
    HOME_BACKGROUNDS,
    WEB_BACKGROUND_CLASSES,
    WEB_BACKGROUND_PHRASES,
    WebScene,
    WebSpec,
    WebWorldConfig,
    render_background_layer,
    render_object_layer,
    render_web_scene,
    scene_spec,
    with_background,
)
from dapt_core.world.web_shapes import LOOKALIKE_GROUPS, WEB_COLOURS, WEB_OBJECT_CLASSES
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
    "DEFAULT_WEB_CONFIG",
    "HOME_BACKGROUNDS",
    "LOOKALIKE_GROUPS",
    "METADATA_NAME",
    "MIN_SIZE",
    "OBJECT_CLASSES",
    "WEB_BACKGROUND_CLASSES",
    "WEB_BACKGROUND_PHRASES",
    "WEB_COLOURS",
    "WEB_OBJECT_CLASSES",
    "ImageFolderExport",
    "ObjectPose",
    "PoseConfig",
    "Scene",
    "SceneConfig",
    "SpuriousTask",
    "TASK_SPLITS",
    "UnknownClassError",
    "WebScene",
    "WebSpec",
    "WebWorldConfig",
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
    "render_background_layer",
    "render_object_layer",
    "render_object_mask",
    "render_scene",
    "render_web_scene",
    "sample_pose",
    "scene_spec",
    "spurious_pairing",
    "with_background",
]
