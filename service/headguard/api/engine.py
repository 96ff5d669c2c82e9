"""The guard's engine: the loaded model, its detector and policy, micro-batched scoring and generation.

Every use of the model (scoring, generation, recalibration) runs on one thread, in order. That
is what makes a weights change safe: it is queued on the same thread and so lands between batches.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from headguard.api.batcher import MicroBatcher
from headguard.api.policy import Policy
from headguard.detect.calibration import Calibration
from headguard.detect.detector import Detector, Verdict, calibrate, follows_defaults
from headguard.errors import HeadguardError, InputError
from headguard.lab.splits import SPLITS_DIR, read_split
from headguard.models.classifier import Classifier
from headguard.models.fingerprint import weights_hash
from headguard.models.generate import Generation, GenerationRequest, Generator
from headguard.prompts import text_problem
from headguard.repair.patch import AppliedPatch, Patch, check_patch
from headguard.settings import Settings
from headguard.telemetry.metrics import Metrics
from headguard.weights.store import BASE, CHANNEL, WeightsStore

log = logging.getLogger("headguard.engine")
BASE_VERSION = BASE


class PatchedWeights(HeadguardError):
    """A calibration is fitted on the base weights it is stored for: refused while a repair is served."""


@dataclass
class Loaded:
    clf: Classifier
    detector: Detector
    policy: Policy
    model_hash: str
    generator: Generator | None


def calibration_cache(settings: Settings, model_hash: str) -> Path:
    """Where the service keeps the calibration it fitted itself for these weights."""
    return settings.resolved_state_dir() / "calibrations" / f"{model_hash.split(':')[-1][:16]}.safetensors"


def load_calibration(settings: Settings, clf: Classifier, model_hash: str) -> tuple[Calibration, Path]:
    """(calibration, its file): the configured one; for a lab model without one, a cached fit on its clean split."""
    if settings.calibration:
        return Calibration.load(settings.calibration), settings.calibration
    split = settings.model / SPLITS_DIR / "calibration.jsonl"
    if not split.exists():
        raise InputError(f"{settings.model} has no clean calibration split: set HEADGUARD_CALIBRATION "
                         "(make one with `headguard calibrate`)")
    cached = calibration_cache(settings, model_hash)
    if cached.exists():
        cal = Calibration.load(cached)
        if follows_defaults(cal, clf.task.kind):
            return cal, cached
        log.warning("the calibration cached at %s was fitted with other settings than this release's "
                    "defaults; fitting it again", cached)
    prompts = [ex.text for ex in read_split(settings.model, "calibration")]
    log.warning("calibrating on %d clean prompts of %s (once; cached at %s)", len(prompts), settings.model, cached)
    cal = calibrate(clf, prompts, model_hash=model_hash)
    cal.save(cached)
    return cal, cached


class Engine:
    def __init__(self, settings: Settings, metrics: Metrics, store: WeightsStore,
                 on_load_failure: Callable[[str], None] | None = None):
        self.settings = settings
        self.store = store
        self.on_load_failure = on_load_failure
        self._applied: AppliedPatch | None = None
        self._patches: dict[str, Patch] = {}  # verified patches kept in memory: rollback needs no disk
        self._refused: set[str] = set()  # versions that failed to apply: not retried on every poll
        self._watcher: asyncio.Task | None = None
        self._announcements = None  # async Redis client for weights announcements (with Redis only)
        self.calibration_path: Path | None = None
        self._ready = False
        self.metrics = metrics
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="headguard-model")
        self.loaded: Loaded | None = None
        self.load_error: str | None = None
        self.weights_version = BASE_VERSION
        self.model_name = settings.model_name or (settings.model.name if settings.model else "model")
        self.device = settings.resolved_device()
        self.started = time.time()
        self._batcher: MicroBatcher[str, Verdict] | None = None

    # --- lifecycle -----------------------------------------------------------------------------
    def load(self) -> None:
        """Blocking: loads model, weights hash, calibration. Runs on the model thread at start."""
        started = time.perf_counter()
        if self.settings.model is None:
            raise InputError("no model: set HEADGUARD_MODEL or pass --model")
        if not Path(self.settings.model).is_dir():
            raise InputError(f"model folder {self.settings.model} does not exist")
        clf = Classifier.from_folder(self.settings.model, self.device)
        model_hash = weights_hash(clf.model)
        cal, self.calibration_path = load_calibration(self.settings, clf, model_hash)
        detector = Detector(clf, cal, model_hash)
        policy = Policy.from_calibration(cal, self.settings.reject_fpr, self.settings.route_fpr,
                                         enforce=self.settings.mode == "enforce")
        generator = Generator(clf) if clf.task.kind == "decoder" else None
        # The event loop checks input lengths with its own copy: a fast tokenizer must not be shared
        # between threads (the model thread pads and truncates with it).
        self._check_tokenizer = copy.deepcopy(clf.tokenizer)
        self.loaded = Loaded(clf, detector, policy, model_hash, generator)
        try:
            self.apply_version(self.store.active())  # ready means: on the active weights
        except Exception as exc:  # the pointer is unreachable (Redis down) or the patch is bad: serve base
            log.error("could not load the active weights version (%s); serving %s", exc, self.weights_version)
        self._publish_state()
        self._ready = True
        log.warning("ready: %s (%s) on %s in %.1f s", self.model_name, model_hash[:19], self.device,
                    time.perf_counter() - started)

    def _publish_state(self) -> None:
        loaded = self.loaded
        self.metrics.weights.info({"version": self.weights_version, "model_hash": loaded.model_hash,
                                   "model": self.model_name})
        self.metrics.threshold.labels("reject").set(loaded.policy.reject_threshold)
        self.metrics.threshold.labels("route").set(loaded.policy.route_threshold)
        self.metrics.ready.set(1)

    # --- weights ---------------------------------------------------------------------------------
    def verify_version(self, version: str) -> None:
        """Model thread: loads and checks a stored version against these weights (raises InputError)."""
        self._refused.discard(version)  # an explicit request retries a version refused before
        if version != BASE:
            patch = self.store.load(version)
            check_patch(self.loaded.clf.model, patch, self.loaded.model_hash)
            self._patches[version] = patch

    def apply_version(self, version: str) -> None:
        """Model thread: swaps the weights to `version` between batches; verified before anything changes."""
        if version == self.weights_version or version in self._refused:
            return
        loaded = self.loaded
        try:
            patch = None
            if version != BASE:
                if version not in self._patches and not self.store.exists(version):
                    raise FileNotFoundError(f"weights version {version} is not in {self.store.root} yet")
                patch = self._patches.get(version) or self.store.load(version)
                check_patch(loaded.clf.model, patch, loaded.model_hash)
                self._patches[version] = patch
        except FileNotFoundError:  # announced before this replica's volume has it: retried at the next poll
            raise
        except Exception:
            self._refused.add(version)
            self.metrics.swaps.labels("refused").inc()
            raise
        # Past this point only in-memory copies of verified slices happen: nothing can fail half-way.
        if self._applied is not None:
            self._applied.revert()
            self._applied = None
        if patch is not None:
            self._applied = AppliedPatch(loaded.clf.model, patch)
        previous, self.weights_version = self.weights_version, version
        self.metrics.swaps.labels("applied").inc()
        self._publish_state()
        log.warning("weights: %s -> %s", previous, version)

    async def sync_weights(self) -> str:
        """Reads the active version and swaps to it if needed; returns the version served."""
        want = await asyncio.to_thread(self.store.active)
        if self.ready and want != self.weights_version:
            await asyncio.get_running_loop().run_in_executor(self.model_thread, self.apply_version, want)
        return self.weights_version

    async def _watch_weights(self) -> None:
        """Follows the active version: on announcements (Redis pub/sub) and every poll interval."""
        loop = asyncio.get_running_loop()
        pubsub = None
        while True:
            try:
                await self.sync_weights()
            except Exception as exc:  # Redis down or a bad patch: keep serving what we have
                log.warning("weights check failed: %s: %s", type(exc).__name__, exc)
            deadline = loop.time() + self.settings.weights_poll_s
            try:
                if self._announcements is None:
                    await asyncio.sleep(self.settings.weights_poll_s)
                    continue
                if pubsub is None:
                    pubsub = self._announcements.pubsub()
                    await pubsub.subscribe(CHANNEL)
                while (left := deadline - loop.time()) > 0:  # a subscribe confirmation is no announcement
                    if await pubsub.get_message(ignore_subscribe_messages=True, timeout=left) is not None:
                        break
            except Exception:
                if pubsub is not None:
                    await asyncio.gather(pubsub.aclose(), return_exceptions=True)
                    pubsub = None
                await asyncio.sleep(max(0.0, deadline - loop.time()))

    async def start(self) -> None:
        self._batcher = MicroBatcher(self._scan_batch, self.model_thread, self.settings.max_batch_size,
                                     self.settings.batch_wait_ms / 1000, on_batch=self._on_batch,
                                     on_depth=self.metrics.queue_depth.set)
        self._batcher.start()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.model_thread, self.load)
        future.add_done_callback(self._loaded)
        if self.settings.redis_url is not None:  # one client for the server's life: its pool reconnects
            import redis.asyncio as aioredis

            self._announcements = aioredis.from_url(self.settings.redis_url, socket_connect_timeout=2)
        self._watcher = loop.create_task(self._watch_weights())

    def _loaded(self, future) -> None:
        exc = future.exception()
        if exc is not None:
            self.load_error = str(exc) if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
            log.error("the model failed to load: %s", self.load_error)
            if self.on_load_failure is not None:
                self.on_load_failure(self.load_error)

    async def stop(self) -> None:
        if self._watcher:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        if self._announcements is not None:
            await asyncio.gather(self._announcements.aclose(), return_exceptions=True)
        if self._batcher:
            await self._batcher.stop()
        self.model_thread.shutdown(wait=False, cancel_futures=True)

    @property
    def ready(self) -> bool:
        return self._ready

    def info(self) -> dict:
        loaded = self.loaded
        info = {"model": self.model_name, "model_path": str(self.settings.model), "device": self.device,
                "ready": self.ready, "weights_version": self.weights_version, "load_error": self.load_error}
        if loaded:
            cal = loaded.detector.calibration
            info.update(
                model_hash=loaded.model_hash, kind=loaded.clf.task.kind,
                dtype=str(next(loaded.clf.model.parameters()).dtype).removeprefix("torch."),
                context_length=loaded.clf.context_length, can_generate=loaded.generator is not None,
                calibration={"created": cal.created, "prompts": cal.n_prompts, "target_fpr": cal.target_fpr,
                             "method": cal.anomaly.method,
                             **{k: v for k, v in cal.setting().items() if k != "n_prompts"}},
                policy={"mode": self.settings.mode, "fail_mode": self.settings.fail_mode,
                        "reject_threshold": loaded.policy.reject_threshold,
                        "route_threshold": loaded.policy.route_threshold},
            )
        return info

    # --- scoring -------------------------------------------------------------------------------
    def check_inputs(self, texts: list[str]) -> None:
        """Refuses what cannot be scored before it joins a batch (one bad input must not fail others)."""
        if not texts:
            raise InputError("no input to score")
        if len(texts) > self.settings.max_inputs:
            raise InputError(f"{len(texts)} inputs; at most {self.settings.max_inputs} per request")
        self.check_inputs_each(texts)

    def check_inputs_each(self, texts: list[str]) -> None:
        clf = self.loaded.clf
        for i, text in enumerate(texts):
            if problem := text_problem(text):
                raise InputError(f"input {i} {problem}")
            if len(text) > self.settings.max_input_chars:
                raise InputError(f"input {i} is {len(text)} characters; at most {self.settings.max_input_chars}")
            n = len(self._check_tokenizer(clf.task.render(text))["input_ids"])
            if n > clf.context_length:
                raise InputError(f"input {i} is {n} tokens; this model takes at most {clf.context_length}")

    def _scan_batch(self, texts: list[str]) -> list[Verdict]:
        return self.loaded.detector.scan(texts, batch_size=self.settings.max_batch_size)

    def _on_batch(self, size: int, seconds: float) -> None:
        self.metrics.batch_size.observe(size)
        self.metrics.scoring_seconds.observe(seconds)

    async def scan(self, texts: list[str]) -> list[Verdict]:
        self.check_inputs(texts)
        timeout = self.settings.score_timeout_s
        try:  # with a timeout, a wedged or overloaded model thread cannot hang the request: it is a fault
            verdicts = await asyncio.wait_for(self._batcher.submit(texts), timeout)
        except TimeoutError:
            self.metrics.scoring_errors.inc()
            raise TimeoutError(f"no score within HEADGUARD_SCORE_TIMEOUT_S={timeout:g} s") from None
        except Exception:
            self.metrics.scoring_errors.inc()
            raise
        for v in verdicts:
            self.metrics.scores.observe(v.score)
        return verdicts

    def recalibrate(self, prompts: list[str], target_fpr: float) -> Calibration:
        """Model thread: fits a new calibration on clean prompts, saves it, and swaps it in whole."""
        if self.weights_version != BASE_VERSION:  # checked here: swaps happen on this thread too
            raise PatchedWeights(f"weights version {self.weights_version} is active: a calibration is fitted on "
                                 "the base weights it is stored for; activate 'base' first")
        loaded = self.loaded
        old = loaded.detector.calibration
        cal = calibrate(loaded.clf, prompts, target_fpr=target_fpr, layers=old.layers,
                        families=tuple(old.families), method=old.anomaly.method, top_k=old.anomaly.top_k,
                        length_adjust=old.anomaly.length_adjusted, per_head=old.anomaly.per_head,
                        coverage=old.coverage, length_bands=old.length_bands, answer_gate=old.gated,
                        model_hash=loaded.model_hash)
        path = calibration_cache(self.settings, loaded.model_hash)
        cal.save(path)
        self.calibration_path = path  # only once saved: repair jobs read the calibration from this file
        policy = Policy.from_calibration(cal, self.settings.reject_fpr, self.settings.route_fpr,
                                         enforce=loaded.policy.enforce)
        self.loaded = Loaded(loaded.clf, Detector(loaded.clf, cal, loaded.model_hash), policy, loaded.model_hash,
                             loaded.generator)
        self._publish_state()
        log.warning("recalibrated on %d prompts: threshold %.3f", len(prompts), cal.threshold)
        return cal

    # --- generation ----------------------------------------------------------------------------
    def generator(self) -> Generator:
        if self.loaded.generator is None:
            raise InputError(f"{self.model_name} is a classifier and cannot generate: set HEADGUARD_UPSTREAM_URL "
                             "to forward allowed requests to an LLM")
        return self.loaded.generator

    async def generate(self, req: GenerationRequest) -> Generation:
        generator = self.generator()
        return await asyncio.get_running_loop().run_in_executor(self.model_thread, generator.generate, req)

    async def stream(self, req: GenerationRequest) -> AsyncIterator[str | Generation]:
        """Text pieces as the model produces them, then the Generation (token counts, finish reason).

        The model thread pushes pieces into an asyncio queue; the model stops when the reader goes away.
        """
        generator = self.generator()
        cancel = threading.Event()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        job = loop.run_in_executor(self.model_thread, generator.stream, req,
                                   lambda piece: loop.call_soon_threadsafe(queue.put_nowait, piece), cancel)
        job.add_done_callback(lambda _: loop.call_soon_threadsafe(queue.put_nowait, None))
        try:
            while (piece := await queue.get()) is not None:
                yield piece
            yield await job  # raises a generation error here
        finally:
            cancel.set()
