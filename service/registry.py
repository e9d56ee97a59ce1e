"""Models in the store -> loaded, warmed, batched versions; reload and atomic hot swap.

Each model name serves one version at a time (the highest valid one by default). A reload
loads the requested version next to the serving one, verifies its sha256 against the manifest,
warms it up for every batch size, then swaps a single dict entry. Requests already queued on
the old version finish there; the old batcher closes once idle. A failed load leaves the
serving version untouched.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .batcher import LatentBatcher
from .manifest import ArtifactMismatch, Manifest, valid_name, version_dirs
from .metrics import ServiceMetrics
from .runtime import GeneratorRuntime, RuntimeOptions
from .settings import Settings

log = logging.getLogger("gan_serve.registry")


class ModelNotFound(KeyError):
    """No such model is loaded (or, for a reload, present in the store)."""


class ReloadRefused(RuntimeError):
    """A version could not be loaded; the serving version (if any) keeps serving."""

    def __init__(
        self, message: str, code: str = "reload_refused", retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after


UNKNOWN_MODEL = "unknown"  # the metric label of every name that is not a served model


@dataclass
class LoadedModel:
    """One served model version: its manifest, onnxruntime session and batcher."""

    name: str
    version: int
    directory: Path
    manifest: Manifest
    runtime: GeneratorRuntime
    batcher: LatentBatcher
    loaded_at: float = field(default_factory=time.time)

    @property
    def provider(self) -> str:
        return self.runtime.provider_name


class ModelRegistry:
    """All served models by name; ``get(name)`` is a plain dict read, safe during swaps."""

    def __init__(self, store: Path, settings: Settings, metrics: ServiceMetrics) -> None:
        self.store = Path(store)
        self.settings = settings
        self.metrics = metrics
        self.models: dict[str, LoadedModel] = {}
        # Older versions asked for by number, least recently used first.
        self.pinned: collections.OrderedDict[tuple[str, int], LoadedModel] = (
            collections.OrderedDict()
        )
        self.state = "loading"  # loading | ready | failed
        self.load_errors: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._retired: set[asyncio.Task] = set()
        self._watch_stop = threading.Event()
        self._watch_thread: threading.Thread | None = None
        self._watch_failed: dict[str, tuple[int, float]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        # Called after every swap of a serving version (the engine tells its front ends).
        self.on_swap: Callable[[], None] | None = None
        self._last_load = -math.inf

    # --- lookups ------------------------------------------------------------------------

    def get(self, name: str) -> LoadedModel:
        try:
            return self.models[name]
        except KeyError:
            raise ModelNotFound(name) from None

    def names(self) -> list[str]:
        return sorted(self.models)

    def metric_label(self, name: str) -> str:
        """``name`` when it is a served model, else one shared value: metric series stay
        bounded whatever names clients send."""
        return name if name in self.models else UNKNOWN_MODEL

    def store_names(self) -> list[str]:
        if not self.store.is_dir():
            return []
        return sorted(
            p.name
            for p in self.store.iterdir()
            if valid_name(p.name) and p.is_dir() and version_dirs(p)
        )

    def versions_on_disk(self, name: str) -> dict[int, Path]:
        if not valid_name(name):
            return {}
        return version_dirs(self.store / name)

    def idle(self) -> bool:
        loaded = [*self.models.values(), *self.pinned.values()]
        return all(m.batcher.idle for m in loaded)

    def loaded_versions(self, name: str) -> list[int]:
        pinned = [v for (n, v) in self.pinned if n == name]
        serving = [self.models[name].version] if name in self.models else []
        return sorted({*serving, *pinned})

    async def get_version(self, name: str, version: int, may_load: bool = False) -> LoadedModel:
        """The serving version, or another version loaded beside it on first use (LRU-bounded
        by ``max_pinned_versions``) when ``may_load``; loads are spaced by
        ``version_load_interval_s``. Raises ModelNotFound or ReloadRefused."""
        current = self.get(name)
        if current.version == version:
            return current
        key = (name, version)
        if key in self.pinned:
            self.pinned.move_to_end(key)
            return self.pinned[key]
        if self.settings.max_pinned_versions == 0:
            raise ReloadRefused(
                f"only the default version {current.version} of {name} is served",
                "version_not_loaded",
            )
        async with self._locks.setdefault(name, asyncio.Lock()):
            if key in self.pinned:
                return self.pinned[key]
            directory = self.versions_on_disk(name).get(version)
            if directory is None:
                raise ReloadRefused(f"{name} has no version {version}", "version_not_found")
            if not may_load:
                raise ReloadRefused(
                    f"{name} v{version} is not loaded; loading a version needs the admin token",
                    "forbidden",
                )
            wait = self._last_load + self.settings.version_load_interval_s - time.monotonic()
            if wait > 0:
                raise ReloadRefused(
                    f"versions are loaded at most once per "
                    f"{self.settings.version_load_interval_s:g} s; retry",
                    "rate_limited",
                    max(1, math.ceil(wait)),
                )
            self._last_load = time.monotonic()
            loaded = await asyncio.to_thread(self._load_version, name, version, directory)
            loaded.batcher.start()
            self.pinned[key] = loaded
            while len(self.pinned) > self.settings.max_pinned_versions:
                _, evicted = self.pinned.popitem(last=False)
                self._retire(evicted)
            log.info("%s v%d loaded beside v%d", name, version, current.version)
            return loaded

    def _retire(self, model: LoadedModel) -> None:
        """Close a batcher once its queued work is done, without waiting for it here."""
        task = asyncio.get_running_loop().create_task(model.batcher.close())
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    # --- loading ------------------------------------------------------------------------

    async def load_all(self) -> None:
        """Load the highest valid version of every model in the store (lower ones as fallback)."""
        self._loop = asyncio.get_running_loop()
        for name in self.store_names():
            for version in sorted(self.versions_on_disk(name), reverse=True):
                try:
                    await self.reload(name, version)
                    break
                except ReloadRefused as exc:
                    self.load_errors[name] = str(exc)
                    log.error("%s v%d not loaded: %s", name, version, exc)
        self.state = "ready" if self.models else "failed"
        if not self.models:
            log.error("no model could be loaded from %s", self.store)
        if self.settings.watch_interval_s > 0:
            self._start_watch()

    async def reload(self, name: str, version: int | None = None) -> tuple[LoadedModel, int | None]:
        """Load ``version`` (default: the highest), warm it, swap it in -> (new, old version)."""
        self._loop = asyncio.get_running_loop()
        if not valid_name(name):
            raise ModelNotFound(name)
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            versions = self.versions_on_disk(name)  # empty for an impossible name
            if not versions:
                raise ModelNotFound(name)
            if version is None:
                version = max(versions)
            if version not in versions:
                raise ReloadRefused(
                    f"{name} has no version {version} (on disk: {sorted(versions)})",
                    "version_not_found",
                )
            loaded = await asyncio.to_thread(self._load_version, name, version, versions[version])
            previous = self.models.get(name)
            loaded.batcher.start()
            self.models[name] = loaded  # the swap: one dict assignment on the event loop
            self.load_errors.pop(name, None)
            self.metrics.set_model_info(name, loaded.version, loaded.provider)
            if previous is not None:
                self._retire(previous)
            stale = self.pinned.pop((name, version), None)  # now the default itself
            if stale is not None:
                self._retire(stale)
            if self.on_swap is not None:
                self.on_swap()
            replaced = f", replacing v{previous.version}" if previous else ""
            log.info("%s v%d serving on %s%s", name, version, loaded.provider, replaced)
            return loaded, previous.version if previous else None

    def session_threads(self) -> int:
        """onnxruntime intra-op threads per session: ``threads`` (0: all cores)."""
        return self.settings.threads

    def _load_version(self, name: str, version: int, directory: Path) -> LoadedModel:
        """Blocking: read and check the manifest and artifact, open the session, warm it up."""
        where = f"{name} v{version}"  # answers name the version, never a server path
        try:
            manifest = Manifest.load(directory)
        except Exception as exc:
            log.error("%s: invalid manifest in %s: %s", where, directory, exc)
            raise ReloadRefused(
                f"{where}: invalid manifest: {self.without_paths(exc)}", "invalid_manifest"
            ) from exc
        if manifest.name != name or manifest.version != version:
            raise ReloadRefused(
                f"{where}: manifest says {manifest.name} v{manifest.version}",
                "invalid_manifest",
            )
        try:
            manifest.verify_artifact(directory)
        except ArtifactMismatch as exc:
            log.error("%s: %s", where, exc)
            raise ReloadRefused(f"{where}: {self.without_paths(exc)}", "artifact_mismatch") from exc
        s = self.settings
        options = RuntimeOptions(
            device=s.device,
            threads=self.session_threads(),
            max_batch_size=s.max_batch_size,
            buckets=s.batch_buckets,
            cuda_graphs=s.cuda_graphs,
        )
        try:
            runtime = GeneratorRuntime(directory, manifest, options)
            if s.warmup:
                runtime.warmup()
        except Exception as exc:
            log.error("%s: cannot run the model in %s: %s", where, directory, exc)
            raise ReloadRefused(
                f"{where}: cannot run the model: {self.without_paths(exc)}", "load_failed"
            ) from exc
        batcher = LatentBatcher(
            runtime.run,
            model=name,
            max_batch_size=s.max_batch_size,
            max_batch_delay_s=s.max_batch_delay_ms / 1000.0,
            queue_limit=s.queue_limit,
            workers=s.inference_workers,
            metrics=self.metrics,
        )
        return LoadedModel(name, version, directory, manifest, runtime, batcher)

    def without_paths(self, exc: Exception) -> str:
        """An exception's text with the store's absolute path cut to a relative one."""
        text = str(exc)
        for root in {str(self.store.resolve()), str(self.store)}:
            text = text.replace(root + "/", "").replace(root, ".")
        return text

    # --- file watch ---------------------------------------------------------------------

    def _start_watch(self) -> None:
        self._watch_thread = threading.Thread(target=self._watch, name="store-watch", daemon=True)
        self._watch_thread.start()

    def _watch(self) -> None:
        """Poll the store; load a model's new highest version (or a new model) when it appears."""
        while not self._watch_stop.wait(self.settings.watch_interval_s):
            for name in self.store_names():
                try:
                    self._watch_one(name)
                except Exception:  # files moving under us: try again next round
                    log.exception("watch: checking %s failed", name)

    def _watch_one(self, name: str) -> None:
        versions = self.versions_on_disk(name)
        if not versions:
            return
        newest = max(versions)
        current = self.models.get(name)
        if current is not None and current.version >= newest:
            return
        stamp = (newest, (versions[newest] / "manifest.json").stat().st_mtime)
        if self._watch_failed.get(name) == stamp:
            return  # already refused; wait for the files to change
        future = asyncio.run_coroutine_threadsafe(self.reload(name, newest), self._loop)
        try:
            future.result()
            self._watch_failed.pop(name, None)
        except Exception as exc:
            self._watch_failed[name] = stamp
            log.error("watch: %s v%d refused: %s", name, newest, exc)

    # --- shutdown -----------------------------------------------------------------------

    async def close(self, timeout: float = 10.0) -> None:
        self._watch_stop.set()
        loaded = [*self.models.values(), *self.pinned.values()]
        await asyncio.gather(*(m.batcher.close(timeout) for m in loaded), *self._retired)
