"""Test images on a host's engine: looked up, and pulled from pokedex when missing.

A run's image the engine lacks is pulled, when the farm has pokedex, from the
registry face of its first node (``HOST:PORT/<image>``, the farm's pokedex token,
never a user's, as the password), through the engine, once per host and image at
a time, then tagged as the name the run asked for
(:meth:`ImageSupply._provide_image`).  Workers extend the ``PYTHONPATH`` the
image sets, so it is looked up too.  Before a run is submitted, its client has
the farm check the image once per host, image id and injected packages
(:meth:`ImageSupply.image_verdict`, :mod:`farm.images.check`); the probe's
facts are kept on disk, so a later farm judges them without a probe container
(:mod:`farm.images.probefacts`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import docker
import docker.auth
import docker.errors
import docker.utils
import requests.exceptions
import urllib3.exceptions

from farm.hosts.base import HostError, RunContext, RunError
from farm.hosts.containers import (
    INJECT_DIR,
    checked_sources,
    image_variable,
    injected_binds,
    worker_pythonpath,
)
from farm.hosts.docker.engine import Engine, EngineLost, bounded, explanation, raw_socket
from farm.images.check import Expectation, Verdict, judge
from farm.images.probe import probe_image
from farm.images.probefacts import ProbeFacts, facts_key

log = logging.getLogger("psyduck.farm.docker")

#: Seconds pulling a missing test image from pokedex's registry face may take.
PULL_TIMEOUT = 600.0
#: Seconds a pull may go without a word of progress from the engine before it is abandoned.
PULL_STALL = 60.0
#: User name sent with the farm's token when pulling from pokedex (any name is accepted).
PULL_USER = "psyduck"


def registry_address(url: str) -> str:
    """``HOST:PORT`` of a pokedex node's URL: where its registry face answers ``/v2/``."""
    parts = urllib.parse.urlsplit(url)
    return parts.netloc.rpartition("@")[2] or url


@dataclass(frozen=True)
class PokedexImage:
    """Where the test image *image* is in pokedex's registry face, and what to call it here.

    ``HOST:PORT/<image>``: the operator pushed it there under its own name.  A tag
    reference is tagged back to *image* on the engine after the pull; a digest
    reference (``name@sha256:…``) cannot be given to another name, so containers
    use the pulled reference itself.
    """

    image: str
    registry: str

    @property
    def parts(self) -> tuple[str, str, bool]:
        """(repository, tag or digest, whether it is a digest) of the reference to pull."""
        repository, tag = docker.utils.parse_repository_tag(self.image)
        by_digest = "@" in self.image
        return f"{self.registry}/{repository}", tag or "latest", by_digest

    @property
    def reference(self) -> str:
        """The full reference pulled: ``HOST:PORT/name:tag`` or ``HOST:PORT/name@digest``."""
        repository, tag, by_digest = self.parts
        return f"{repository}{'@' if by_digest else ':'}{tag}"


class PullFailed(Exception):
    """The engine could not pull an image; the text is what it (or the registry) said."""


class ImagePull:
    """One pull through an engine (``POST /images/create``), abortable from another thread.

    The SDK's ``pull`` reads its stream without a timeout; here every read of the
    engine's progress stream has :data:`PULL_STALL` seconds, the whole pull a
    deadline checked between progress messages, and :meth:`abort` (a closing
    host, a deadline passed on the event loop) shuts the stream's socket so the
    thread reading it returns at once.  Errors the engine reports in the middle
    of the stream (``{"error": …}``) fail the pull like an HTTP error does.
    """

    def __init__(
        self, api: docker.APIClient, repository: str, tag: str, auth: dict[str, str] | None
    ) -> None:
        self._api = api
        self._params = {"fromImage": repository, "tag": tag}
        self._headers = {"X-Registry-Auth": docker.auth.encode_header(auth)} if auth else {}
        self._lock = threading.Lock()
        self._response: Any = None
        self._aborted = False
        self._finished = False

    def run(self, deadline: float) -> None:
        """Pull until done (blocking); PullFailed if not."""
        api = self._api
        try:
            response = api._post(  # the SDK's own request, with a read timeout
                api._url("/images/create"),
                params=self._params,
                headers=self._headers,
                stream=True,
                timeout=PULL_STALL,
            )
        except Exception as exc:  # no answer in time, or the engine cannot be reached
            raise PullFailed(_stream_failure(exc)) from exc
        with self._lock:
            self._response, aborted = response, self._aborted
        try:
            if aborted:
                raise PullFailed("the pull was abandoned")
            try:
                api._raise_for_status(response)
            except docker.errors.APIError as exc:
                raise PullFailed(explanation(exc)) from exc
            for message in api._stream_helper(response, decode=True):
                if isinstance(message, dict) and message.get("error"):
                    raise PullFailed(str(message["error"]).strip())
                if time.monotonic() > deadline:
                    raise PullFailed(f"the pull took longer than {PULL_TIMEOUT:.0f} s")
        except PullFailed:
            raise
        except Exception as exc:  # a read timeout or a broken stream (requests, urllib3, ssh)
            if self._aborted:
                raise PullFailed("the pull was abandoned") from exc
            raise PullFailed(_stream_failure(exc)) from exc
        finally:
            with self._lock:
                self._finished = True
            response.close()

    def abort(self) -> None:
        """Stop the pull: the thread reading its stream returns (PullFailed)."""
        with self._lock:
            self._aborted = True
            if self._response is None or self._finished:
                return  # not sent yet (run() gives up when it is), or over
            try:
                sock = raw_socket(self._api._get_raw_response_socket(self._response))
                sock.shutdown(socket.SHUT_RDWR)
            except Exception:
                pass  # already closed, or an error reply that is read whole anyway


def _stream_failure(exc: Exception) -> str:
    """Why the engine's answer to a pull stopped coming."""
    if isinstance(exc, requests.exceptions.Timeout | urllib3.exceptions.TimeoutError):
        return (
            f"the engine said nothing for {PULL_STALL:.0f} s (it, or the registry it pulls "
            f"from, is stuck): {exc}"
        )
    return f"the engine's answer broke off: {type(exc).__name__}: {exc}"


def _succeeded(future: asyncio.Future[Any]) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None


class ImageSupply:
    """The part of :class:`~farm.hosts.docker.DockerHost` that provides its test images."""

    name: str
    image: str | None
    python: str
    remote: bool
    embedded: bool
    #: Per test image the run asked for: the reference its containers start from,
    #: once the engine has it (looked up, or pulled from pokedex: once at a time).
    _images: dict[str, asyncio.Future[str]]
    _pulls: set[ImagePull]
    #: Per image reference: its own ``PYTHONPATH``, which workers extend.
    _image_paths: dict[str, str]
    #: Verdicts of the up-front image check, per image id, client expectation and
    #: the packages mounted for it.
    _verdicts: dict[tuple[str, Expectation, str], asyncio.Future[Verdict]]
    #: Probe facts kept across farms (the embedded farm lives one session).
    _probe_facts: ProbeFacts
    _inject_volume: Callable[[Engine, str, Mapping[str, str]], Awaitable[str]]
    _ensure_engine: Callable[[], Awaitable[Engine]]

    async def image_verdict(
        self, image: str | None, expect: Expectation, run: RunContext
    ) -> Verdict:
        """Why the test image cannot run this host's workers (one line, or None), and
        how it differs from the client's machine though usable; each line names host and image.

        *image* (else the host's own) is provided as for a run (pulled from
        *run*'s pokedex if missing), then probed once per image id, *expect*
        (:mod:`farm.images.check`) and the packages mounted as workers get them
        (:func:`~farm.hosts.containers.checked_sources`).
        """
        image = image or self.image
        if not image:
            return Verdict(
                f"host {self.name}: no test image (pass --psyduck-image or set psyduck_image)"
            )
        try:
            module_dirs = checked_sources(run, client_disk=self.embedded)
            engine = await self._ensure_engine()
            reference = await self._run_image(engine, image, run)
            image_id = (await engine.call(engine.api.inspect_image, reference))["Id"]
            key = (image_id, expect, repr(sorted(module_dirs.items())))
            verdict = self._verdicts.get(key)
            if verdict is None or (verdict.done() and not _succeeded(verdict)):
                verdict = asyncio.ensure_future(
                    self._probe(engine, reference, image_id, expect, module_dirs)
                )
                self._verdicts[key] = verdict
            found = await asyncio.shield(verdict)
        except (HostError, RunError) as exc:
            return Verdict(str(exc) if isinstance(exc, HostError) else f"host {self.name}: {exc}")
        except docker.errors.APIError as exc:
            found = Verdict(f"the engine refused to check it: {explanation(exc)}")
        except TimeoutError:
            found = Verdict("shipping psyduck's worker code to check it timed out")
        where = f"host {self.name}: test image {image!r}: "
        return Verdict(
            found.problem and where + found.problem, tuple(where + note for note in found.notes)
        )

    async def _probe(
        self,
        engine: Engine,
        image: str,
        image_id: str,
        expect: Expectation,
        module_dirs: dict[str, str],
    ) -> Verdict:
        """Judge *image* by its probe's facts: remembered ones (:mod:`farm.images.probefacts`),
        else a probe container's."""
        pythonpath = worker_pythonpath(await self._image_pythonpath(engine, image))
        key = await asyncio.to_thread(
            facts_key,
            str(engine.info.get("ID", "")),
            image_id,
            self.python,
            pythonpath,
            module_dirs,
        )
        facts = await asyncio.to_thread(self._probe_facts.get, key)
        if facts is None:
            if self.remote:
                volume = await self._inject_volume(engine, image, module_dirs)
                binds = {volume: {"bind": INJECT_DIR, "mode": "ro"}}
            else:
                binds = injected_binds(module_dirs)
            try:
                facts = await probe_image(engine, image, self.python, binds, self.name, pythonpath)
            except ValueError as exc:
                return Verdict(str(exc))
            except docker.errors.APIError as exc:
                return Verdict(f"a container of it cannot be created: {explanation(exc)}")
            await asyncio.to_thread(self._probe_facts.put, key, facts)
        return judge(facts, expect)

    async def _check_image(self, engine: Engine, image: str) -> None:
        """HostError unless *image* is on the engine now (what ``hosts check`` reports)."""
        ready = self._images.get(image)
        if ready is not None and _succeeded(ready):
            return
        if not await self._image_present(engine, image):
            raise HostError(self._missing(image))

    def _missing(self, image: str) -> str:
        return f"host {self.name}: test image {image!r} is not present on its Docker engine"

    async def _image_pythonpath(self, engine: Engine, image: str) -> str:
        """The ``PYTHONPATH`` *image* sets (``ENV``), looked up once per image and engine."""
        if image not in self._image_paths:
            try:
                details = await engine.call(engine.api.inspect_image, image)
            except docker.errors.APIError as exc:
                raise HostError(
                    f"host {self.name}: cannot inspect test image {image!r}: {explanation(exc)}"
                ) from exc
            env = (details.get("Config") or {}).get("Env") or []
            self._image_paths[image] = image_variable(env, "PYTHONPATH")
        return self._image_paths[image]

    async def _image_present(self, engine: Engine, image: str) -> bool:
        try:
            await engine.call(engine.api.inspect_image, image)
        except docker.errors.ImageNotFound:
            return False
        return True

    async def _run_image(self, engine: Engine, image: str, run: RunContext) -> str:
        """The reference the run's containers start from: *image*, pulled first if missing.

        One look-up, and at most one pull, per image at a time: slots starting
        together wait for the same one.  A success is remembered (until the
        engine is reconnected); a failure is not, so the next shard tries again
        (the operator may have pushed the image since).
        """
        ready = self._images.get(image)
        if ready is None or (ready.done() and not _succeeded(ready)):
            ready = asyncio.ensure_future(self._provide_image(engine, image, run))
            self._images[image] = ready
        return await asyncio.shield(ready)

    async def _provide_image(self, engine: Engine, image: str, run: RunContext) -> str:
        """*image* if the engine has it; else pull ``HOST:PORT/<image>`` from pokedex.

        The pull goes through the engine (so the engine, not the coordinator, must
        reach the registry), with the farm's pokedex token as ``docker login`` password,
        since a pokedex with a token may refuse anonymous reads (the farm's own does).
        A tag reference is then tagged as *image* (and the registry's name removed again, unless
        the engine had it before), so the engine holds what the run asked for.
        """
        if await self._image_present(engine, image):
            return image
        if not run.pokedex_urls:
            raise HostError(self._missing(image))
        source = PokedexImage(image, registry_address(run.pokedex_urls[0]))
        had_reference = await self._image_present(engine, source.reference)
        try:
            await self._pull(engine, source, run.pokedex_token)
        except PullFailed as exc:
            raise HostError(
                f"{self._missing(image)}, and pulling {source.reference} from pokedex's "
                f"registry failed: {exc}"
            ) from exc
        if source.parts[2]:
            return source.reference  # a digest names one image: containers use the pull's name
        name, own_tag = docker.utils.parse_repository_tag(image)
        try:
            await engine.call(engine.api.tag, source.reference, name, own_tag or "latest")
        except docker.errors.APIError as exc:
            raise HostError(
                f"host {self.name}: pulled {source.reference} from pokedex but could not tag it "
                f"{image!r}: {explanation(exc)}"
            ) from exc
        if not had_reference:  # a name someone gave it on this engine stays
            try:
                await engine.call(engine.api.remove_image, source.reference, noprune=True)
            except docker.errors.APIError:
                pass  # only a second name of the same image: harmless if it stays
        log.info("host %s: pulled test image %r from %s", self.name, image, source.reference)
        return image

    async def _pull(self, engine: Engine, source: PokedexImage, token: str | None) -> None:
        """Pull *source* through *engine*; PullFailed with what the engine or registry said."""
        if not engine.alive:
            raise EngineLost(f"lost the connection to the Docker engine of host {self.name}")
        repository, tag, _ = source.parts
        auth = (
            {"username": PULL_USER, "password": token, "serveraddress": source.registry}
            if token
            else None
        )
        pull = ImagePull(engine.api, repository, tag, auth)
        self._pulls.add(pull)
        log.info(
            "host %s: test image %r missing; pulling %s", self.name, source.image, source.reference
        )
        try:
            await bounded(
                asyncio.to_thread(pull.run, time.monotonic() + PULL_TIMEOUT),
                PULL_TIMEOUT + PULL_STALL,
            )
        except TimeoutError as exc:
            pull.abort()
            raise PullFailed(
                f"the engine gave no answer within {PULL_TIMEOUT + PULL_STALL:.0f} s"
            ) from exc
        except BaseException:
            pull.abort()  # cancelled (the host is closing): the reading thread returns
            raise
        finally:
            self._pulls.discard(pull)
