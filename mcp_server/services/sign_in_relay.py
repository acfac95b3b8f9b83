"""A sign-in to an MCP server completed by whichever app process the person's browser reaches.

A pending sign-in lives in the `ToolOAuth` of the process that began it (the SDK's flow holds its PKCE
verifier in memory, waiting for the code). Behind a load balancer the browser's GET /oauth/callback may reach
another process of the install. On PostgreSQL that process relays it over the store's notifications:

    process B (callback, unknown state) ── CALLBACK_CHANNEL {relay, state, code} ──▶ every process
    process A (holds the state)         ── ANSWER_CHANNEL {relay, claimed} ──▶ B   (within CLAIM_SECONDS)
                                        ── completes the sign-in ──▶ ANSWER_CHANNEL {relay, done, message} ──▶ B
    B answers the browser with A's page.

The page a sign-in link opens first (`describe`: whose sign-in, for which org and server) is found the same
way, answered at once by the process that holds it. A state no process claims within CLAIM_SECONDS is answered
like any unknown link. On SQLite (one machine)
nothing is relayed: the process that got the callback answers alone. The code travels in a notification,
never stored; it is good once, for minutes, and only with the verifier the beginning process keeps.

Example (with a store and a `ToolOAuth`, in the app's lifespan)::

    relay = SignInRelay(store, tool_oauth)
    keeping = asyncio.create_task(relay.keep_answering())   # claim what other processes receive for us
    page = await relay.describe(state)                                       # the start page's call
    page_text = await relay.complete(state, code, iss=None, error=None)   # the callback route's call
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from contextlib import aclosing, suppress

from pydantic import BaseModel, ValidationError

from mcp_server.services.tool_oauth import (
    AFTER_SIGN_IN_SECONDS,
    EXCHANGE_SECONDS,
    UNKNOWN_LINK,
    SignInFailed,
    SignInPage,
    ToolOAuth,
)
from mcp_server.store import Store

log = logging.getLogger("ariel.sign_in_relay")

CALLBACK_CHANNEL = "ariel_oauth_callback"
ANSWER_CHANNEL = "ariel_oauth_answer"
CLAIM_SECONDS = 3.0
"""How long a process that got a callback it does not hold waits for the one that does to say so."""
LISTEN_AGAIN_SECONDS = 5.0
MAX_RELAYS = 8
"""Callbacks one process relays at once. Each holds a database connection for up to CLAIM_SECONDS, and the
route is public: without a bound, anyone could use up the database's connections with made-up states."""
# The MCP SDK makes each sign-in's state with secrets.token_urlsafe(32): 43 characters of that alphabet.
_STATE = re.compile(r"[A-Za-z0-9_-]{43}")
MAX_NOTIFICATION_BYTES = 7900  # PostgreSQL's limit is 8000, with the channel's name
MAX_VALUE_CHARS = 2048
"""A callback's code, iss or error longer than this is not relayed (a notification carries at most 8000 bytes)."""


class _Callback(BaseModel):
    relay: str
    state: str
    describe: bool = False  # the start page's question, not a callback: answered with `page`
    code: str | None = None
    iss: str | None = None
    error: str | None = None


class _Answer(BaseModel):
    relay: str
    done: bool = False  # False: claimed, the exchange goes on; True: `ok` and `message` say how it ended
    ok: bool = False
    message: str = ""
    page: SignInPage | None = None


class SignInRelay:
    """`complete` for the callback route, here or in the process that holds the sign-in; `keep_answering` for
    the other side."""

    def __init__(self, store: Store, oauth: ToolOAuth) -> None:
        self._store = store
        self._oauth = oauth
        self._answering: set[asyncio.Task[None]] = set()
        self._relays = asyncio.Semaphore(MAX_RELAYS)
        # Apart: made-up states flooding the public start page must not leave a real callback no slot.
        self._page_relays = asyncio.Semaphore(MAX_RELAYS)

    async def complete(self, state: str, code: str | None, *, iss: str | None = None, error: str | None = None) -> str:
        """What `ToolOAuth.complete` answers, from whichever process holds the sign-in `state` names.

        Raises:
            SignInFailed: as `ToolOAuth.complete`; also when no process claims the state, or the one that did
                does not finish in time.
        """
        if not state or self._oauth.holds(state) or not self._store.shares_notifications:
            return await self._oauth.complete(state, code, iss=iss, error=error)
        too_long = any(value is not None and len(value) > MAX_VALUE_CHARS for value in (code, iss, error))
        if not _STATE.fullmatch(state) or too_long:
            raise SignInFailed(UNKNOWN_LINK)  # no sign-in of any process made it
        if self._relays.locked():
            raise SignInFailed("this app process is busy finding sign-ins; try the link again in a moment")
        async with self._relays:
            return (await self._relay(_Callback(relay=secrets.token_urlsafe(16), state=state, code=code, iss=iss,
                                                error=error))).message

    async def describe(self, state: str) -> SignInPage:
        """What `ToolOAuth.describe` answers, from whichever process holds the sign-in `state` names.

        Raises:
            SignInFailed: as `ToolOAuth.describe`; also when no process claims the state in time.
        """
        if not state or self._oauth.holds(state) or not self._store.shares_notifications:
            return await self._oauth.describe(state)
        if not _STATE.fullmatch(state):
            raise SignInFailed(UNKNOWN_LINK)
        if self._page_relays.locked():
            raise SignInFailed("this app process is busy finding sign-ins; try the link again in a moment")
        async with self._page_relays:
            answer = await self._relay(_Callback(relay=secrets.token_urlsafe(16), state=state, describe=True))
        if answer.page is None:
            raise SignInFailed(UNKNOWN_LINK)
        return answer.page

    async def _relay(self, callback: _Callback) -> _Answer:
        """`callback` to every process; the answer of the one that holds its state (ok, or SignInFailed)."""
        relay = callback.relay
        answers: asyncio.Queue[_Answer] = asyncio.Queue()
        listening = asyncio.Event()
        hearing = asyncio.create_task(self._hear(relay, answers, listening))
        try:
            heard_of = asyncio.ensure_future(listening.wait())
            try:
                await asyncio.wait({hearing, heard_of}, timeout=CLAIM_SECONDS, return_when=asyncio.FIRST_COMPLETED)
            finally:
                heard_of.cancel()
            if not listening.is_set():
                raise SignInFailed("this app process could not reach the others of the install to find the sign-in; "
                                   "try the link again in a moment")
            try:
                await self._store.notify(CALLBACK_CHANNEL, callback.model_dump_json())
            except Exception as exc:
                log.warning("could not relay a sign-in callback to the other app processes (%s)",
                            type(exc).__name__)
                raise SignInFailed("this app process could not reach the others of the install to find the "
                                   "sign-in; try the link again in a moment") from None
            try:
                async with asyncio.timeout(CLAIM_SECONDS):
                    answer = await answers.get()
            except TimeoutError:
                raise SignInFailed(UNKNOWN_LINK) from None
            if not answer.done:
                try:
                    async with asyncio.timeout(EXCHANGE_SECONDS + AFTER_SIGN_IN_SECONDS + CLAIM_SECONDS):
                        answer = await answers.get()
                except TimeoutError:
                    raise SignInFailed("the app process that began this sign-in did not finish it in time; ask "
                                       "Ariel for a new link") from None
        finally:
            hearing.cancel()
            # A listen that failed (the database went away) was said above as "could not reach"; not raised here.
            with suppress(asyncio.CancelledError, Exception):
                await hearing
        if not answer.ok:
            raise SignInFailed(answer.message)
        return answer

    async def _hear(self, relay: str, answers: asyncio.Queue[_Answer], listening: asyncio.Event) -> None:
        async with aclosing(self._store.listen(ANSWER_CHANNEL, listening)) as heard:
            async for payload in heard:
                with suppress(ValidationError):
                    answer = _Answer.model_validate_json(payload)
                    if answer.relay == relay:
                        answers.put_nowait(answer)

    async def keep_answering(self, listening: asyncio.Event | None = None) -> None:
        """Complete the callbacks other processes relay for sign-ins this one holds; until cancelled.
        `listening` is set once the store listens (again, after a dropped connection)."""
        failing = False
        try:
            while True:
                try:
                    async with aclosing(self._store.listen(CALLBACK_CHANNEL, listening)) as heard:
                        failing = False
                        async for payload in heard:
                            self._claim(payload)
                except Exception as exc:  # the database restarted, say: callbacks reaching another process fail
                    if not failing:
                        log.warning("stopped hearing sign-in callbacks other app processes received (%s); trying "
                                    "again every %.0f s", type(exc).__name__, LISTEN_AGAIN_SECONDS)
                    failing = True
                await asyncio.sleep(LISTEN_AGAIN_SECONDS)
        finally:
            for task in list(self._answering):
                task.cancel()
            await asyncio.gather(*self._answering, return_exceptions=True)

    def _claim(self, payload: str) -> None:
        try:
            callback = _Callback.model_validate_json(payload)
        except ValidationError:
            return
        if not self._oauth.holds(callback.state):
            return  # another process's, or nobody's: that one claims it, or the sender answers "unknown"
        task = asyncio.create_task(self._answer(callback), name="relayed sign-in callback")
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    async def _answer(self, callback: _Callback) -> None:
        if callback.describe:
            try:
                page = await self._oauth.describe(callback.state)
            except SignInFailed as exc:
                await self._tell(_Answer(relay=callback.relay, done=True, message=str(exc)))
            else:
                answer = _Answer(relay=callback.relay, done=True, ok=True, page=page)
                if len(answer.model_dump_json().encode()) > MAX_NOTIFICATION_BYTES:  # long names; the URL is bounded
                    answer = _Answer(relay=callback.relay, done=True, message=(
                        "this sign-in's page is too large to pass between Ariel's app processes; open the link "
                        "again in a moment, or ask Ariel for a new one"))
                await self._tell(answer)
            return
        await self._tell(_Answer(relay=callback.relay))
        try:
            message = await self._oauth.complete(callback.state, callback.code, iss=callback.iss,
                                                 error=callback.error)
            answer = _Answer(relay=callback.relay, done=True, ok=True, message=message)
        except SignInFailed as exc:
            answer = _Answer(relay=callback.relay, done=True, message=str(exc))
        except Exception:
            log.exception("completing a sign-in another app process received failed")
            answer = _Answer(relay=callback.relay, done=True,
                             message="the sign-in failed in the app process that began it; ask Ariel for a new link")
        await self._tell(answer)

    async def _tell(self, answer: _Answer) -> None:
        try:
            await self._store.notify(ANSWER_CHANNEL, answer.model_dump_json())
        except Exception as exc:  # the sign-in goes on (or ended) either way; only the person's page goes unsaid
            log.warning("could not tell another app process about a sign-in it relayed (%s)", type(exc).__name__)
