"""Artifacts on the Hugging Face Hub: a Hub id read as an artifact, and an artifact uploaded as a model repository.

``user/name`` (or ``user/name@revision``), given where an artifact directory is expected and no local directory of
that name exists, is the Hub repository of that id: ``huggingface_hub.snapshot_download`` brings its files into the
Hugging Face cache (or finds them there; ``HF_HUB_OFFLINE=1`` uses the cache only), and the snapshot is loaded with
every check a local artifact gets. ``upload_artifact`` creates the repository (``HfApi.create_repo``) and uploads an
artifact directory into it (``HfApi.upload_folder``). Nothing here imports huggingface_hub until it is used.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from .errors import ArtifactError

__all__ = ["ARTIFACT_PATTERNS", "create_repository", "download_artifact", "is_hub_id", "parse_hub_id", "push_artifact",
           "snapshot_blobs", "upload_artifact"]

# What an artifact repository holds (the names artifact.py writes): downloaded and uploaded, nothing else.
ARTIFACT_PATTERNS = ["prompt.json", "prompt.safetensors", "README.md", "backbone/*"]

# huggingface_hub's rule for a repo id (namespace/name: word characters, '-', '_', '.', at most 96 each, no '--' or
# '..'), with an optional @revision (a branch, tag or commit; branches may hold '/', as refs/pr/1 does).
_NAME = r"[A-Za-z0-9](?:[\w.\-]{0,94}[A-Za-z0-9_])?"
HUB_ID = re.compile(rf"(?P<repo>{_NAME}/{_NAME})(?:@(?P<revision>[\w.\-]+(?:/[\w.\-]+)*))?")

OFFLINE_FIX = ("with HF_HUB_OFFLINE=1 only the local Hugging Face cache is used: unset it (or set HF_HUB_OFFLINE=0) "
               "to download the artifact once")


def parse_hub_id(spec) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` of a string that can name a Hub model repository (``user/name`` or
    ``user/name@revision``), or None for anything else (an absolute or relative path of more parts, ``~``, ``..``)."""
    try:
        text = os.fspath(spec)
    except TypeError:
        return None
    if not isinstance(text, str) or os.sep != "/" and os.sep in text:
        return None
    m = HUB_ID.fullmatch(text)
    if m is None or "--" in m["repo"] or ".." in m["repo"] or m["repo"].endswith(".git"):
        return None
    rev = m["revision"]
    if rev is not None and (".." in rev or rev.endswith((".", "/"))):
        return None
    return m["repo"], rev


def is_hub_id(spec) -> bool:
    return parse_hub_id(spec) is not None


def _offline() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # an older huggingface_hub: read the variable as it does
        return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _first_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


def download_artifact(spec, *, revision: str | None = None, token=None, cache_dir=None) -> Path:
    """The local snapshot of the Hub artifact ``spec`` (``user/name[@revision]``), downloaded or found in the cache.

    Raises ArtifactError saying whether the Hub could not be reached (or offline mode is on), or the repository or
    revision does not exist, with the fix."""
    parsed = parse_hub_id(spec)
    if parsed is None:
        raise ArtifactError(f"{str(spec)!r} is not a Hub id (user/name or user/name@revision)", where=str(spec)[:200],
                            fix="give a local artifact directory, or a Hub id such as user/my-prompt")
    repo_id, rev = parsed
    if revision is not None and rev is not None and revision != rev:
        raise ArtifactError(f"two revisions are given: {rev!r} in the id and {revision!r} as revision", where=str(spec),
                            fix="give the revision once, in the id (user/name@revision) or as revision=")
    rev = revision or rev
    where = str(spec)
    not_local = f"there is no local directory {where!r}, and "
    try:
        from huggingface_hub import errors as hf_errors
        from huggingface_hub import snapshot_download

        from . import __version__

        path = Path(snapshot_download(repo_id, revision=rev, token=token, cache_dir=cache_dir, allow_patterns=ARTIFACT_PATTERNS,
                                      library_name="prompttune", library_version=__version__))
    except ImportError as e:
        raise ArtifactError(f"{not_local}reading Hub ids needs huggingface_hub ({_first_line(e)})", where=where,
                            fix="pip install huggingface_hub, or give a local artifact directory") from None
    except Exception as e:  # huggingface_hub's errors, and the HTTP client's beneath them
        raise _download_error(e, hf_errors, repo_id, rev, where, not_local) from None
    if not (path / "prompt.json").is_file():
        raise ArtifactError(f"the Hub repository {repo_id!r} holds no prompt.json: it is not a prompttune artifact", where=where,
                            fix="check the id; a prompttune artifact repository is what push_to_hub uploads (prompt.json, "
                                "prompt.safetensors, README.md)")
    return path


def _download_error(e: Exception, hf_errors, repo_id: str, rev: str | None, where: str, not_local: str) -> ArtifactError:
    connect = "check the id and your connection, or give a local artifact directory; " + \
              "with HF_HUB_OFFLINE=1 only the local Hugging Face cache is used"
    if isinstance(e, hf_errors.RevisionNotFoundError):
        return ArtifactError(f"the Hub repository {repo_id!r} has no revision {rev!r}", where=where,
                             fix="check the revision (a branch, tag or commit of the repository), or leave @REVISION out "
                                 "for the main branch")
    if isinstance(e, hf_errors.GatedRepoError):
        return ArtifactError(f"{not_local}the Hub repository {repo_id!r} is gated: it needs a token of an account that was "
                             "granted access", where=where,
                             fix="ask for access on the repository's page, then log in (hf auth login) or pass token=...")
    if isinstance(e, hf_errors.RepositoryNotFoundError):
        return ArtifactError(f"{not_local}the Hugging Face Hub has no model repository {repo_id!r} (not found, or private "
                             "and no token with access was given)", where=where,
                             fix="check the id (user/name) or the local path; for a private repository log in "
                                 "(hf auth login) or pass token=...")
    if isinstance(e, hf_errors.LocalEntryNotFoundError) and (
            _offline() or isinstance(e.__cause__, hf_errors.OfflineModeIsEnabled)):
        return ArtifactError(f"{not_local}{repo_id!r} is not in the local Hugging Face cache; the Hub is not asked because "
                             "offline mode is on (HF_HUB_OFFLINE=1)", where=where,
                             fix=f"check the id, or give a local artifact directory; {OFFLINE_FIX}")
    if isinstance(e, hf_errors.OfflineModeIsEnabled):
        return ArtifactError(f"{not_local}offline mode is on (HF_HUB_OFFLINE=1), so the Hub is not asked for {repo_id!r}",
                             where=where, fix=f"check the id, or give a local artifact directory; {OFFLINE_FIX}")
    if isinstance(e, hf_errors.HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", None)
        return ArtifactError(f"{not_local}the Hugging Face Hub refused to send {repo_id!r}"
                             f"{f' (HTTP {status})' if status else ''}: {_first_line(e)}", where=where, fix=connect)
    if isinstance(e, (ValueError, TypeError)) and not isinstance(e, OSError):  # an id huggingface_hub's own check refuses
        return ArtifactError(f"{not_local}{repo_id!r} is not a valid Hub id ({_first_line(e)})", where=where,
                             fix="check the path, or give a Hub id such as user/my-prompt")
    return ArtifactError(f"{not_local}the Hugging Face Hub could not be reached to download {repo_id!r} (and it is not in "
                         f"the local cache): {_first_line(e.__cause__ or e)}", where=where, fix=connect)


def snapshot_blobs(directory) -> Path | None:
    """The ``blobs`` folder of a Hugging Face cache snapshot (``models--user--name/snapshots/<commit>``), whose files
    are symlinks into it; None for any other directory. An artifact's confinement includes it: the blobs are the
    repository's own files, kept one level up by the cache."""
    d = Path(directory)
    repo = d.parent.parent
    if d.parent.name != "snapshots" or not repo.name.startswith("models--"):
        return None
    blobs = repo / "blobs"
    if not blobs.is_dir() or blobs.is_symlink():
        return None
    resolved = blobs.resolve()
    return resolved if resolved.parent == repo.resolve() else None


# ---- uploading --------------------------------------------------------------------------------------------------
def _check_repo_id(repo_id) -> str:
    ok = isinstance(repo_id, str) and (parse_hub_id(repo_id) is not None and "@" not in repo_id
                                       or re.fullmatch(_NAME, repo_id) is not None)
    if not ok:
        raise ArtifactError(f"{str(repo_id)!r} is not a Hub repository id", where="repo_id",
                            fix="give user/name (or name, in your own namespace), e.g. push_to_hub(\"me/sentiment-prompt\")")
    return repo_id


def _push_error(e: Exception, repo_id: str) -> ArtifactError:
    from huggingface_hub import errors as hf_errors

    login = "log in with `hf auth login` (or set HF_TOKEN, or pass token=...) with a token that may write to the namespace"
    if isinstance(e, hf_errors.OfflineModeIsEnabled) or _offline():
        return ArtifactError("offline mode is on (HF_HUB_OFFLINE=1): nothing is uploaded", where=repo_id,
                             fix="unset HF_HUB_OFFLINE (or set it to 0) to push, or keep the artifact local with save_pretrained")
    if isinstance(e, hf_errors.LocalTokenNotFoundError):
        return ArtifactError("uploading to the Hub needs a token, and none is set", where=repo_id, fix=login)
    if isinstance(e, hf_errors.HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", None)
        fix = login if status in (401, 403) else "check the repository id and your connection, then push again"
        return ArtifactError(f"the Hugging Face Hub refused the upload{f' (HTTP {status})' if status else ''}: {_first_line(e)}",
                             where=repo_id, fix=fix)
    return ArtifactError(f"the Hugging Face Hub could not be reached to upload the artifact: {_first_line(e)}", where=repo_id,
                         fix="check your connection, then push again (the artifact itself is unchanged)")


def create_repository(repo_id: str, *, private: bool | None = None, token=None) -> str:
    """Create the model repository (nothing happens if it exists); returns its full id (namespace/name)."""
    from huggingface_hub import HfApi

    from . import __version__

    _check_repo_id(repo_id)
    api = HfApi(token=token, library_name="prompttune", library_version=__version__)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    except Exception as e:  # huggingface_hub's errors, and the HTTP client's beneath them
        raise _push_error(e, repo_id) from None
    return getattr(url, "repo_id", None) or repo_id


def upload_artifact(directory, repo_id: str, *, private: bool | None = None, token=None,
                    commit_message: str | None = None) -> str:
    """Upload the artifact in ``directory`` (prompt.json, prompt.safetensors, README.md, backbone/; a run's other files
    stay local) to the model repository ``repo_id``, created if missing. Returns the commit's URL."""
    d = Path(directory)
    if not (d / "prompt.json").is_file():
        raise ArtifactError(f"{d} is not a prompttune artifact (no prompt.json)", where=str(d),
                            fix="point to the output directory of `prompttune train`, or save the model first")
    full = create_repository(repo_id, private=private, token=token)
    with tempfile.TemporaryDirectory(prefix="prompttune-push-") as tmp:
        return _upload(_with_card_for(d, full, Path(tmp)), full, token=token, commit_message=commit_message)


def _with_card_for(d: Path, repo_id: str, tmp: Path) -> Path:
    """What to upload from ``d``: the directory itself when its README.md is a person's own; otherwise a mirror of its
    artifact files (links, nothing copied) with the model card rendered again so that its load commands name
    ``repo_id`` (and, from a run's ``config.yaml``, its data)."""
    import json

    import yaml
    from huggingface_hub.utils import filter_repo_objects

    from .card import CARD_NAME, is_card, write_card

    if (d / CARD_NAME).exists() and not is_card(d / CARD_NAME):
        return d
    meta = json.loads((d / "prompt.json").read_text(encoding="utf-8"))
    run = None
    if (d / "config.yaml").is_file():
        try:
            run = yaml.safe_load((d / "config.yaml").read_text(encoding="utf-8"))
        except yaml.YAMLError:
            run = None
    out = tmp / "artifact"
    files = sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())
    for name in filter_repo_objects(files, allow_patterns=ARTIFACT_PATTERNS):
        if name != CARD_NAME:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).symlink_to((d / name).resolve())
    out.mkdir(parents=True, exist_ok=True)
    write_card(out, meta, run=run if isinstance(run, dict) else None, hub_id=repo_id)
    return out


def push_artifact(model, repo_id: str, *, private: bool | None = None, token=None, commit_message: str | None = None,
                  metrics: dict | None = None, run=None) -> str:
    """Save ``model`` into a temporary directory (its card naming the repository; ``metrics`` and ``run`` for the card)
    and upload it; returns the commit's URL."""
    from .artifact import save

    full = create_repository(repo_id, private=private, token=token)
    with tempfile.TemporaryDirectory(prefix="prompttune-push-") as tmp:
        out = save(model, Path(tmp) / "artifact", metrics=metrics, run=run, hub_id=full)
        return _upload(out, full, token=token, commit_message=commit_message)


def _upload(d: Path, repo_id: str, *, token, commit_message: str | None) -> str:
    from huggingface_hub import HfApi

    from . import __version__

    api = HfApi(token=token, library_name="prompttune", library_version=__version__)
    try:
        info = api.upload_folder(repo_id=repo_id, folder_path=str(d), repo_type="model", allow_patterns=ARTIFACT_PATTERNS,
                                 commit_message=commit_message or "Upload prompttune artifact")
    except Exception as e:  # huggingface_hub's errors, and the HTTP client's beneath them
        raise _push_error(e, repo_id) from None
    return str(getattr(info, "commit_url", None) or info)
