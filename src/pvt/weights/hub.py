"""``hf-hub:<repo id>`` sources: download a checkpoint folder through huggingface_hub into its cache;
and :func:`upload`, the other way (``pvt push``).

A cached copy is used without contacting the hub. Otherwise the hub is asked; when no network is
reachable (or ``HF_HUB_OFFLINE=1``) a :class:`ValueError` says so and how to pass a local path (or, for
an upload, how to write the folder and upload it later).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

__all__ = ["HUB_PREFIX", "is_hub_source", "parse_hub_source", "resolve_source", "download", "check_repo_id",
           "check_upload", "upload"]

HUB_PREFIX = "hf-hub:"
_CONFIG = "config.json"
_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def is_hub_source(source: object) -> bool:
    return isinstance(source, str) and source.startswith(HUB_PREFIX)


def parse_hub_source(source: str) -> tuple[str, str | None]:
    """``"hf-hub:org/name@rev"`` -> ``("org/name", "rev")`` (revision ``None`` when absent)."""
    spec = source[len(HUB_PREFIX) :].strip()
    repo, _, rev = spec.partition("@")
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"{source!r} is not a hub id: expected 'hf-hub:<owner>/<name>' (optionally '@<revision>')")
    return repo, rev or None


def _endpoint_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    """A quick TCP connect to the hub (instead of huggingface_hub's ~25 s of retries). Behind a proxy
    a direct connect proves nothing, so the answer is then left to huggingface_hub."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return True
    url = urlparse(endpoint)
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _local_help(repo: str) -> str:
    return (
        f"On a machine with network, run `huggingface-cli download {repo} --local-dir DIR` (or "
        f"`hf download {repo} --local-dir DIR`) and pass that folder instead: "
        "pvt.create_model(name, pretrained='DIR') or `pvt convert DIR out.safetensors --model NAME`"
    )


def _fetch(repo: str, revision: str | None, local_only: bool) -> Path:
    """Download (or find in the cache) config.json and the first weight file that exists."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    def get(filename: str) -> Path | None:
        try:
            return Path(hf_hub_download(repo, filename, revision=revision, local_files_only=local_only))
        except EntryNotFoundError:  # includes LocalEntryNotFoundError: not there / not cached
            return None

    weights = None
    for name in _WEIGHTS:
        weights = get(name)
        if weights is not None:
            break
    if weights is None:
        raise LookupError(f"no {' or '.join(_WEIGHTS)}")
    get(_CONFIG)  # optional: a bare state dict folder has none
    return weights.parent


def download(repo: str, revision: str | None = None) -> Path:
    """The local snapshot folder of ``repo`` (from the cache when present, else downloaded)."""
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        return _fetch(repo, revision, local_only=True)
    except LookupError:
        pass
    where = f"hf-hub:{repo}" + (f"@{revision}" if revision else "")
    if constants.HF_HUB_OFFLINE:
        raise ValueError(
            f"cannot fetch {where}: offline mode is on (HF_HUB_OFFLINE=1) and the files are not in the "
            f"cache {constants.HF_HUB_CACHE}. Unset HF_HUB_OFFLINE, or: {_local_help(repo)}"
        )
    if not _endpoint_reachable(constants.ENDPOINT):
        raise ValueError(
            f"cannot fetch {where}: no network was reachable ({constants.ENDPOINT} did not answer) and the "
            f"files are not in the cache {constants.HF_HUB_CACHE}. {_local_help(repo)}"
        )
    try:
        return _fetch(repo, revision, local_only=False)
    except RepositoryNotFoundError:
        raise ValueError(f"cannot fetch {where}: no such repository on the hub (or it is private)") from None
    except RevisionNotFoundError:
        raise ValueError(f"cannot fetch {where}: the repository has no revision {revision!r}") from None
    except GatedRepoError:
        raise ValueError(f"cannot fetch {where}: the repository is gated; log in with `hf auth login`") from None
    except LookupError as e:
        raise ValueError(f"cannot fetch {where}: the repository holds {e}") from None
    except (HfHubHTTPError, OSError) as e:
        raise ValueError(f"cannot fetch {where}: {str(e).splitlines()[0]}. {_local_help(repo)}") from None


def resolve_source(source: str | Path) -> Path:
    """A local path for ``source``: itself, or the downloaded snapshot of an ``hf-hub:`` id."""
    if is_hub_source(source):
        repo, revision = parse_hub_source(str(source))
        return download(repo, revision)
    if not isinstance(source, (str, Path)):
        raise ValueError(f"pretrained must be a path or 'hf-hub:<repo id>', got {type(source).__name__}")
    return Path(source).expanduser()


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if it is ``owner/name`` (letters, digits, ``-``, ``_``, ``.``), else a ValueError."""
    import re

    if not isinstance(repo_id, str) or not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id) or ".." in repo_id:
        raise ValueError(f"--repo-id {repo_id!r} is not a hub repository id: expected OWNER/NAME")
    return repo_id


def check_upload(repo_id: str) -> str:
    """A one-line ValueError when ``repo_id`` is malformed or the hub cannot be reached (offline mode, no
    network); else the advice for a failed upload: how to write the folder and upload it later."""
    from huggingface_hub import constants

    check_repo_id(repo_id)
    later = f"write the folder with `pvt push ... --dry-run --out DIR` and upload it later with `hf upload {repo_id} DIR`"
    if constants.HF_HUB_OFFLINE:
        raise ValueError(f"cannot push to hf-hub:{repo_id}: offline mode is on (HF_HUB_OFFLINE=1); {later}")
    if not _endpoint_reachable(constants.ENDPOINT):
        raise ValueError(f"cannot push to hf-hub:{repo_id}: no network was reachable ({constants.ENDPOINT} did not "
                         f"answer); {later}")
    return later


def upload(folder: str | Path, repo_id: str, *, private: bool = False, token: str | None = None,
           message: str = "Upload with pvt push") -> str:
    """Create the model repository ``repo_id`` if needed and upload ``folder`` to it as one commit;
    returns the commit's URL. Without network, in offline mode or without credentials, a one-line
    ValueError that says how to upload the folder later."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    later = check_upload(repo_id)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=message)
    except (HfHubHTTPError, OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"cannot push to hf-hub:{repo_id}: {first} (log in with `hf auth login` or pass --token; "
                         f"or {later})") from None
    return str(getattr(info, "commit_url", info))
