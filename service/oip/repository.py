"""The protocol's model repository extension, whatever the transport: the index of the model
folder, and loading and unloading a model by name. REST (`/v2/repository/...`) and gRPC
(`RepositoryIndex`, `RepositoryModelLoad`, `RepositoryModelUnload`) both call these.

A name is a served model's (`mnist-vae`), as the index lists them; a protocol model's name
(`mnist-vae-encoder`) means its model, whose encoder, decoder and scorer are loaded and unloaded
together. Loading a model already loaded reloads it from its folder, with the rules of
`POST /models/{name}/reload`: a new version that fails a check is refused with its problem and
the old one keeps serving. Loads and unloads pass the same gate as reloads (VAE_ALLOW_RELOAD,
one at a time per model, VAE_RELOAD_MIN_INTERVAL_S apart).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from pydantic import ValidationError

from service.errors import BadRequest, Conflict, NotFound
from service.manifest import Manifest, ModelLoadError, model_folders
from service.models.registry import ModelRegistry
from service.models.runtime import ModelRuntime
from service.oip.dataplane import GRAPHS

if TYPE_CHECKING:
    from service.http.state import ReloadGate

READY: Final = "READY"
UNAVAILABLE: Final = "UNAVAILABLE"
NOT_LOADED = "not loaded: the repository's load call serves it"
# Triton's load and unload parameters; this service takes none that change what is loaded.
IGNORED_PARAMETERS = ("unload_dependents",)


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One model folder: its model's name and version, and whether it is served."""

    name: str
    version: str
    state: Literal["READY", "UNAVAILABLE"]
    reason: str


def index(registry: ModelRegistry, ready_only: bool = False) -> list[IndexEntry]:
    """Every model folder of VAE_MODEL_DIR, by folder: READY for a served model, UNAVAILABLE
    with the reason for the others (not loaded, or a manifest that cannot be read)."""
    served = {runtime.folder: runtime for runtime in registry.models.values()}
    try:
        folders = model_folders(registry.settings.model_dir)
    except ModelLoadError:  # the folder is gone: what is served is all there is
        folders = sorted(served)
    entries = []
    for folder in sorted({*folders, *served}):
        runtime = served.get(folder)
        if runtime is not None:
            version = runtime.manifest.version
            if runtime.ready:
                entries.append(IndexEntry(runtime.name, version, READY, ""))
            else:
                entries.append(IndexEntry(runtime.name, version, UNAVAILABLE, "loading"))
        elif not ready_only:
            entries.append(_unserved(folder))
    return [e for e in entries if e.state == READY] if ready_only else entries


def _unserved(folder: Path) -> IndexEntry:
    """A folder no served model comes from: its manifest's name and version (read, not
    checked: the load checks the rest), or the folder's name and what is wrong."""
    try:
        manifest = Manifest.model_validate_json((folder / "manifest.json").read_bytes())
    except (OSError, ValidationError) as exc:
        problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return IndexEntry(folder.name, "", UNAVAILABLE, f"{folder}/manifest.json: {problem}")
    return IndexEntry(manifest.name, manifest.version, UNAVAILABLE, NOT_LOADED)


def model_name(registry: ModelRegistry, name: str) -> str:
    """The served model `name` means: itself, or the model of a protocol model's name."""
    if name in registry.models:
        return name
    base, _, graph = name.rpartition("-")
    return base if graph in GRAPHS and base in registry.models else name


def check_parameters(parameters: dict[str, Any] | None) -> None:
    """Triton's `unload_dependents` is taken (and changes nothing: models here depend on none);
    any other parameter (a model config, files) is refused by name."""
    unknown = sorted(set(parameters or {}) - set(IGNORED_PARAMETERS))
    if unknown:
        raise BadRequest(
            "", f"parameters: {unknown} not supported; models are loaded from VAE_MODEL_DIR as is"
        )


async def load(registry: ModelRegistry, gate: ReloadGate, name: str) -> ModelRuntime:
    """Serve the model `name`: a loaded one reloaded from its folder, else the folder whose
    manifest names it loaded and added. 404 naming the folder's models when none does; 409 with
    the problem when it fails a check (a loaded one keeps serving)."""
    served = model_name(registry, name)
    with gate.admit(served, registry.settings):
        try:
            if served in registry.models:
                return await registry.reload(served)
            return await registry.add(_folder_of(registry, name))
        except ModelLoadError as exc:
            keeps = (
                "the previous version keeps serving" if served in registry.models else "not added"
            )
            raise Conflict("", f"load of {name!r} refused, {keeps}: {exc}") from exc


def _folder_of(registry: ModelRegistry, name: str) -> Path:
    for entry, folder in _unserved_entries(registry):
        if entry.name == name:
            return folder
    known = sorted({e.name for e in index(registry)})
    raise NotFound("", f"no model folder in VAE_MODEL_DIR holds a model named {name!r}; {known}")


def _unserved_entries(registry: ModelRegistry) -> list[tuple[IndexEntry, Path]]:
    served = {runtime.folder for runtime in registry.models.values()}
    try:
        folders = model_folders(registry.settings.model_dir)
    except ModelLoadError:
        return []
    return [(_unserved(folder), folder) for folder in folders if folder not in served]


async def unload(registry: ModelRegistry, gate: ReloadGate, name: str) -> None:
    """Stop serving the model `name` (requests running on it finish). 404 when it is not
    loaded; 409 for the last model and VAE_DEFAULT_MODEL's."""
    served = model_name(registry, name)
    if served not in registry.models:
        loaded = ", ".join(registry.models)
        raise NotFound("", f"model {name!r} is not loaded; loaded: {loaded}")
    with gate.admit(served, registry.settings):
        try:
            await registry.remove(served)
        except ModelLoadError as exc:
            raise Conflict("", f"unload of {name!r} refused: {exc}") from exc
