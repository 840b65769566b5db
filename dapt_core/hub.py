"""Prompt sets on the Hugging Face Hub: push one with a model card made from its metadata, pull one back.

A prompt set is one ``.safetensors`` file (:mod:`dapt_core.checkpoint`); on the Hub it lives in a model
repository next to a ``README.md`` model card that says what it is (learner, DAPT settings, backbone,
classes, training, metrics) and how to use it. :func:`push_prompt_set` checks the file like any prompt set
before anything is sent and uploads both files in one commit. :func:`pull_prompt_set` downloads into a
temporary file beside the destination, checks it like any prompt set (metadata schema, every tensor readable,
optionally that it fits a backbone) and only then moves it into place, so a refused or interrupted download
leaves nothing behind.

Both first ask :func:`dapt_core.weights.online.is_online` whether the Hub answers, so an offline machine gets
a clear error within seconds. Logging in is huggingface_hub's (``hf auth login`` or ``HF_TOKEN``).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import urllib.parse
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub import constants as hf_constants
from huggingface_hub import errors as hf_errors

from dapt_core.checkpoint import CheckpointError, PromptSetInfo, load_prompt_set, read_info
from dapt_core.errors import DaptError
from dapt_core.fileio import atomic_path
from dapt_core.weights.online import is_online

if TYPE_CHECKING:
    from dapt_core.backbones import Backbone

log = logging.getLogger(__name__)

PROMPTS_SUFFIX = ".safetensors"
CARD_NAME = "README.md"  # the Hub shows a repository's README.md as its model card
MAX_PULL_BYTES = 200 * 2**20  # the largest prompt set pulled (a ViT-B/16 MaPLe set is ~14 MB); the app's upload cap
CARD_CLASSES_SHOWN = 20  # class names listed in the card; the rest are counted
CARD_TAGS = ("dapt-attention-lab", "prompt-tuning", "clip", "dapt")
LOGIN_HINT = "log in with `hf auth login` or set HF_TOKEN"
# huggingface_hub's HTTP errors are OSErrors; its transport's own (connection lost, timeout) are not, in 1.x+
_TRANSPORT_ERRORS = tuple({OSError, getattr(hf_errors, "HTTPError", OSError)})


class HubError(DaptError):
    """A push or pull that cannot be done: offline, not logged in, no such repository or file, a refused file."""


def parse_hub_spec(spec: str) -> tuple[str, str | None]:
    """``REPO_ID[/FILE]`` as ``(repo_id, file or None)``.

    A spec ending in ``.safetensors`` names a file: ``owner/name/sets/p.safetensors`` is the file
    ``sets/p.safetensors`` of ``owner/name``, ``name/p.safetensors`` the file ``p.safetensors`` of ``name``.
    Anything else is a repository id.

    Raises:
        HubError: an empty spec or one with empty parts.
    """
    parts = spec.strip().strip("/").split("/")
    if not spec.strip() or any(not p or p in {".", ".."} for p in parts):
        raise HubError(f"{spec!r} is not REPO_ID or REPO_ID/FILE.safetensors (e.g. someone/dapt-sets/pets.safetensors)")
    if not parts[-1].endswith(PROMPTS_SUFFIX) or len(parts) == 1:
        return "/".join(parts), None
    owner_parts = 2 if len(parts) >= 3 else 1
    return "/".join(parts[:owner_parts]), "/".join(parts[owner_parts:])


def _hub_host() -> str:
    return urllib.parse.urlsplit(hf_constants.ENDPOINT).hostname or "huggingface.co"


def _connect(api: HfApi | None, action: str) -> HfApi:
    """``api``, or a new HfApi once the Hub is known to answer."""
    if api is not None:
        return api
    host = _hub_host()
    if not is_online(host):
        raise HubError(f"cannot reach the Hugging Face Hub ({host}): this machine is offline, or HF_HUB_OFFLINE "
                       f"or DAPT_OFFLINE is set; `hub {action}` needs the network")
    return HfApi()


@contextmanager
def _hub_errors(repo_id: str, filename: str | None = None) -> Iterator[None]:
    """Turns huggingface_hub's and the network's errors into one :class:`HubError` that says what to do."""
    where = f"{filename} in {repo_id}" if filename else repo_id
    try:
        yield
    except hf_errors.RevisionNotFoundError as err:
        raise HubError(f"{repo_id} has no such revision ({_reason(err)})") from err
    except hf_errors.RepositoryNotFoundError as err:
        raise HubError(f"no repository {repo_id} on the Hub, or it is private and you are not allowed to see "
                       f"it ({LOGIN_HINT})") from err
    except hf_errors.EntryNotFoundError as err:
        raise HubError(f"no file {where} on the Hub") from err
    except hf_errors.HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status in (401, 403):
            raise HubError(f"the Hub refused access to {repo_id} (HTTP {status}): {LOGIN_HINT}, with a token that "
                           "may write to it") from err
        raise HubError(f"the Hub answered HTTP {status} for {where}: {_reason(err)}") from err
    except _TRANSPORT_ERRORS as err:
        raise HubError(f"the connection to the Hub failed for {where}: {_reason(err)}") from err


def _reason(err: Exception) -> str:
    return getattr(err, "server_message", None) or " ".join(str(err).split()) or type(err).__name__


def _cell(value: Any) -> str:
    """A value for one Markdown table cell (no pipes or line breaks)."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return " ".join(text.split()).replace("|", "\\|")


def _base_model(backbone: str) -> str | None:
    """The Hub repository of the backbone's weights, when the registry names one."""
    from dapt_core.backbones import get_backbone_spec
    from dapt_core.weights import get_weight_spec

    try:
        spec = get_backbone_spec(backbone)
        return get_weight_spec(spec.weights).hf_repo if spec.weights else None
    except ValueError:  # a backbone or weights name this version does not know
        return None


def model_card(info: PromptSetInfo, repo_id: str, filename: str) -> str:
    """The ``README.md`` of a pushed prompt set: YAML front matter for the Hub, then what it is and how to use it."""
    meta = info.meta
    train, metrics, dapt = meta.get("train") or {}, meta.get("metrics") or {}, meta.get("dapt") or {}
    classes = [str(c) for c in meta.get("classnames", [])]
    front = ["---", "tags:"] + [f"- {t}" for t in (*CARD_TAGS, meta["learner"])]
    if (base := _base_model(meta["backbone"])) is not None:
        front.append(f"base_model: {json.dumps(base)}")
    front.append("---")
    shown = ", ".join(classes[:CARD_CLASSES_SHOWN]) + (f" … ({len(classes) - CARD_CLASSES_SHOWN} more)"
                                                      if len(classes) > CARD_CLASSES_SHOWN else "")
    training = {k: train[k] for k in ("data", "source", "shots", "epochs", "seed", "selected") if k in train}
    rows = [("file", f"`{filename}`"), ("learner", f"{meta['learner']} {_cell(meta['learner_options'])}"),
            ("DAPT", _cell(dapt) if dapt.get("cue", "off") != "off" else "off (the plain learner)"),
            ("backbone", f"{meta['backbone']} (open_clip `{meta['model']}`, weights "
                         f"{meta.get('pretrained') or 'random'})"),
            ("classes", f"{len(classes)}: {_cell(shown)}"), ("training", _cell(training) if training else "—"),
            ("metrics", ", ".join(f"{_cell(k)} {_cell(v)}" for k, v in metrics.items()) or "—"),
            ("created", _cell(meta.get("created", "—"))),
            ("format", f"{meta['format']} version {meta.get('format_version', 1)}")]
    body = [f"# {_cell(info.name)}", "",
            f"A **{info.label}** prompt set for the `{meta['backbone']}` backbone, made with DAPT Attention Lab "
            "(`python -m dapt_core`). It holds the learned prompts only; the backbone's weights are not in it.",
            "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), "", "## Use", "", "```bash",
            f"python -m dapt_core hub pull {repo_id}/{filename}",
            f"python -m dapt_core eval --prompts {Path(filename).name} --data imagefolder:PATH",
            "```", "", "or upload the file in the app's *Model and prompts* tab.", ""]
    return "\n".join(front + [""] + body)


def push_prompt_set(path: str | Path, repo_id: str, *, path_in_repo: str | None = None, private: bool = False,
                    card: bool = True, api: HfApi | None = None) -> dict[str, str]:
    """Uploads a prompt set (and its model card) to a Hub model repository, creating it if needed.

    Args:
        path: the ``.safetensors`` prompt set; checked like any prompt set before anything is sent.
        repo_id: ``owner/name`` of the model repository.
        path_in_repo: the file's name in the repository (default: its own name).
        private: create the repository private (an existing one keeps its visibility).
        card: also write ``README.md`` from the set's metadata.
        api: a client to use instead of a new ``HfApi`` (tests pass a fake).

    Returns:
        ``repo``, ``file`` and ``url`` of the pushed file.

    Raises:
        CheckpointError: not a readable prompt set. HubError: offline, not allowed, or the Hub refused it.
    """
    info = read_info(path)
    _check_tensors(info.path)
    filename = path_in_repo or info.path.name
    if not filename.endswith(PROMPTS_SUFFIX):
        raise HubError(f"the file's name in the repository must end in {PROMPTS_SUFFIX}, got {filename!r}")
    repo_id, named_file = parse_hub_spec(repo_id)
    if named_file is not None:
        raise HubError(f"push takes a repository id ({repo_id}); name the file in it with path_in_repo "
                       "(--path-in-repo)")
    api = _connect(api, "push")
    operations = [CommitOperationAdd(path_in_repo=filename, path_or_fileobj=str(info.path))]
    if card:
        operations.append(CommitOperationAdd(path_in_repo=CARD_NAME,
                                             path_or_fileobj=model_card(info, repo_id, filename).encode("utf-8")))
    with _hub_errors(repo_id, filename):
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.create_commit(repo_id, operations, repo_type="model",
                          commit_message=f"Add prompt set {filename} ({info.label}, {len(info.meta['classnames'])} "
                                         "classes)")
    url = f"{hf_constants.ENDPOINT}/{repo_id}/blob/main/{filename}"
    log.info("pushed %s to %s", info.path, url)
    return {"repo": repo_id, "file": filename, "url": url}


def _check_tensors(path: Path) -> None:
    """Reads every tensor of a prompt set (a truncated or corrupt file fails here, not when it is used)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        load_file(str(path), device="cpu")
    except (SafetensorError, OSError, RuntimeError) as err:
        raise CheckpointError(f"{path.name}: its tensors cannot be read ({err})") from err


def _choose_file(api: HfApi, repo_id: str, revision: str | None) -> str:
    with _hub_errors(repo_id):
        files = api.list_repo_files(repo_id, repo_type="model", revision=revision)
    sets = sorted(f for f in files if f.endswith(PROMPTS_SUFFIX))
    if len(sets) != 1:
        found = ", ".join(sets) if sets else "none"
        raise HubError(f"{repo_id} holds {len(sets)} prompt sets ({found}); name one: {repo_id}/FILE.safetensors")
    return sets[0]


def pull_prompt_set(spec: str, out: str | Path | None = None, *, revision: str | None = None,
                    overwrite: bool = False, backbone: Backbone | None = None,
                    api: HfApi | None = None) -> PromptSetInfo:
    """Downloads a prompt set from the Hub and, once it is checked, writes it to ``out`` atomically.

    Args:
        spec: ``REPO_ID`` (the repository's only prompt set) or ``REPO_ID/FILE.safetensors``.
        out: where it goes (default: the file's name in the current folder); a folder (one that exists, or a
            name without suffix) gets the file under its own name.
        revision: a branch, tag or commit of the repository.
        overwrite: replace an existing ``out`` (it is never replaced by a file that fails the checks).
        backbone: also check that the set loads onto this backbone.
        api: a client to use instead of a new ``HfApi`` (tests pass a fake).

    Returns:
        The metadata of the written file.

    Raises:
        HubError: offline, no such repository or file, too big, ``out`` exists. CheckpointError: the file is not
            a prompt set of this tool, or does not fit ``backbone``.
    """
    repo_id, filename = parse_hub_spec(spec)
    api = _connect(api, "pull")
    filename = filename or _choose_file(api, repo_id, revision)
    target = Path(out) if out is not None else Path(Path(filename).name)
    if target.is_dir() or not target.suffix:  # a folder, existing or to be made
        target = target / Path(filename).name
    if target.suffix != PROMPTS_SUFFIX:
        raise HubError(f"the pulled prompt set must be written to a {PROMPTS_SUFFIX} file, got {target}")
    if target.exists() and not overwrite:
        raise HubError(f"{target} exists already; pass --overwrite to replace it")
    with _hub_errors(repo_id, filename):
        sizes = [getattr(p, "size", None) for p in api.get_paths_info(repo_id, [filename], repo_type="model",
                                                                      revision=revision)]
    if not sizes:
        raise HubError(f"no file {filename} in {repo_id} on the Hub")
    if sizes[0] is not None and sizes[0] > MAX_PULL_BYTES:
        raise HubError(f"{filename} in {repo_id} is {sizes[0] / 2**20:.0f} MB, over the {MAX_PULL_BYTES / 2**20:.0f} "
                       "MB a prompt set may have")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".hub-pull-", dir=target.parent) as staging:
        with _hub_errors(repo_id, filename):
            downloaded = Path(api.hf_hub_download(repo_id, filename, repo_type="model", revision=revision,
                                                  local_dir=staging))
        if downloaded.stat().st_size > MAX_PULL_BYTES:
            raise HubError(f"{filename} in {repo_id} is over the {MAX_PULL_BYTES / 2**20:.0f} MB a prompt set may have")
        staged = Path(staging) / target.name  # what the checks' messages name
        os.replace(downloaded, staged)
        info = read_info(staged)
        _check_tensors(staged)
        if backbone is not None:
            load_prompt_set(staged, backbone)
        with atomic_path(target) as tmp:
            os.replace(staged, tmp)
    log.info("pulled %s/%s into %s", repo_id, filename, target)
    return PromptSetInfo(target, info.meta)
