"""Hostile answers for the malformed-input tests: a proxy that spoils what an emulator says.

``HostileProxy`` listens on 127.0.0.1 (port 0) in front of an emulator and forwards every
request byte for byte, keeping the client's ``Host`` so the emulator's absolute links point
back at the proxy. While a spoiler is armed for a route, each matching upstream answer passes
through it before the connector sees it:

- ``Edit``: the JSON body with one ``JsonMutation`` applied (a key dropped, a value of the wrong
  type, a null, a huge or negative number, NaN/Infinity/``1e999`` literals), recompressed the
  way it came;
- ``Replace``: another status, body and content type (garbage, HTML, Atom XML, empty);
- ``Truncate``: the wire body cut short with a matching ``Content-Length`` (a broken gzip stream
  when it was compressed);
- ``ClaimGzip`` / ``HideGzip`` / ``BadGzipHeader``: a plain body claiming gzip, a gzip body
  without the header, a gzip magic number in front of plain bytes;
- ``CutConnection``: headers promising the whole body, part of it, then the connection closed.

Counters (``spoiled``, ``forwarded``) and ``Edit.hits`` let a test tell a mutation that was
survived from one that never found its target. Nothing here knows 1C or МойСклад.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import math
import re
import resource
import sys
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from copy import deepcopy
from dataclasses import dataclass, field, replace
from pathlib import Path as FilePath
from typing import Any, Literal, TypeVar
from xml.etree import ElementTree

import aiohttp
from aiohttp import web
from hypothesis import strategies as st
from multidict import CIMultiDict
from yarl import URL

from daemon.errors import ConnectorError, PermanentError, TransientError

T = TypeVar("T")

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "host",
        "date",
        "server",
        "upgrade",
        "proxy-connection",
    }
)
GZIP_MAGIC = b"\x1f\x8b"

Path = tuple[str | int, ...]


# -- answers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One upstream answer as it travels: ``body`` is compressed when Content-Encoding says so."""

    method: str
    path: str  # raw path and query, as the client sent them
    status: int
    headers: CIMultiDict[str]
    body: bytes

    @property
    def gzipped(self) -> bool:
        return "gzip" in self.headers.get("Content-Encoding", "").lower()

    def plain(self) -> bytes:
        return gzip.decompress(self.body) if self.gzipped and self.body else self.body

    def document(self) -> Any:
        """The decoded JSON body; ``ValueError`` when it is not JSON.

        Fractions and NaN/Infinity literals stay ``Raw`` text, so an answer edited elsewhere
        goes back with every untouched number exactly as the emulator wrote it."""
        return json.loads(self.plain().decode("utf-8"), parse_float=Raw, parse_constant=Raw)

    def with_plain(self, raw: bytes) -> Answer:
        """The same answer carrying ``raw``, compressed again if the original was."""
        body = gzip.compress(raw, compresslevel=1) if self.gzipped else raw
        return replace(self, body=body)

    def with_headers(self, **changes: str | None) -> Answer:
        """Header changes by name (``_`` for ``-``); ``None`` removes the header."""
        headers = CIMultiDict(self.headers)
        for name, value in changes.items():
            header = name.replace("_", "-")
            headers.popall(header, None)
            if value is not None:
                headers[header] = value
        return replace(self, headers=headers)


@dataclass(frozen=True)
class Cut:
    """Send headers promising ``answer``'s whole body, then ``keep`` bytes, then close."""

    answer: Answer
    keep: int


Spoiler = Callable[[Answer], "Answer | Cut"]


# -- JSON mutations --------------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """A JSON literal Python would not write itself, e.g. ``1e999`` (overflows to infinity)."""

    text: str


def dumps(document: Any) -> bytes:
    """JSON with ``NaN``/``Infinity`` for non-finite floats and ``Raw`` literals spliced in."""
    raws: list[str] = []

    def splice(value: Any) -> Any:
        if isinstance(value, Raw):
            raws.append(value.text)
            return f"\x00raw{len(raws) - 1}\x00"
        if isinstance(value, dict):
            return {key: splice(item) for key, item in value.items()}
        if isinstance(value, list):
            return [splice(item) for item in value]
        return value

    text = json.dumps(splice(document), ensure_ascii=False, allow_nan=True)
    for index, literal in enumerate(raws):
        text = text.replace(json.dumps(f"\x00raw{index}\x00"), literal)
    return text.encode("utf-8")


def node_paths(document: Any) -> list[Path]:
    """Every node below the root, depth first, in document order."""
    found: list[Path] = []
    stack: list[tuple[Path, Any]] = [((), document)]
    while stack:
        path, node = stack.pop()
        children: list[tuple[Path, Any]] = []
        if isinstance(node, dict):
            children = [((*path, key), value) for key, value in node.items()]
        elif isinstance(node, list):
            children = [((*path, index), value) for index, value in enumerate(node)]
        found.extend(child for child, _ in children)
        stack.extend(reversed(children))
    return found


def _parent(document: Any, path: Path) -> Any:
    node = document
    for step in path[:-1]:
        node = node[step]
    return node


@dataclass(frozen=True)
class JsonMutation:
    """Drop or replace one node of a JSON document.

    ``key`` picks the nodes that can be hit: ``"$"`` is the whole document, ``None`` any node,
    a name every member of that name at any depth; ``pick`` chooses one of them (modulo).
    ``at`` names one exact path instead.
    """

    op: Literal["drop", "replace"]
    key: str | None
    pick: int
    value: Any = None
    at: Path | None = None  # an exact path instead of key/pick (explicit cases)

    def target(self, document: Any) -> Path | None:
        """The path this mutation hits in ``document`` (``()`` is the root), None if none."""
        if self.at is not None:
            return self.at if self.at in node_paths(document) or not self.at else None
        if self.key == "$":
            return ()
        candidates = node_paths(document)
        if self.key is not None:
            candidates = [path for path in candidates if path and path[-1] == self.key]
        if not candidates:
            return None
        return candidates[self.pick % len(candidates)]

    def apply(self, document: Any) -> tuple[Any, Path | None]:
        """(mutated copy, path hit); the path is None when nothing matched (copy unchanged)."""
        copy = deepcopy(document)
        path = self.target(copy)
        if path is None:
            return copy, None
        if not path:
            return (self.value if self.op == "replace" else None), ()
        parent = _parent(copy, path)
        if self.op == "drop":
            del parent[path[-1]]
        else:
            parent[path[-1]] = self.value
        return copy, path


def drop(*path: str | int) -> JsonMutation:
    """Remove the node at ``path``."""
    return JsonMutation("drop", None, 0, at=path)


def put(value: Any, *path: str | int) -> JsonMutation:
    """Replace the node at ``path`` (the whole document when ``path`` is empty)."""
    return JsonMutation("replace", None, 0, value, at=path)


def is_finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# -- spoilers --------------------------------------------------------------------------------


@dataclass
class Edit:
    """Apply ``mutation`` to the JSON body (answers that are not JSON pass untouched).

    ``hits`` records, per spoiled answer, the path hit and the document before the change, so a
    test can tell which row (and which entity) the connector was given a broken version of.
    """

    mutation: JsonMutation
    hits: list[tuple[Path, Any]] = field(default_factory=list)
    # Mutations a test must not send in-process (e.g. a page count that would exhaust memory);
    # such answers pass unchanged and the case is covered elsewhere, out of process.
    spare: Callable[[Path, JsonMutation], bool] | None = None

    def __call__(self, answer: Answer) -> Answer:
        try:
            document = answer.document()
        except (ValueError, OSError, EOFError, zlib.error):
            return answer
        target = self.mutation.target(document)
        if target is not None and self.spare is not None and self.spare(target, self.mutation):
            return answer
        mutated, path = self.mutation.apply(document)
        if path is None:
            return answer
        self.hits.append((path, document))
        return answer.with_plain(dumps(mutated))


@dataclass(frozen=True)
class Replace:
    """Another status and/or body; ``body=None`` keeps the original plain body."""

    status: int | None = None
    body: bytes | None = None
    content_type: str | None = None
    gzip: bool = False

    def __call__(self, answer: Answer) -> Answer:
        raw = answer.plain() if self.body is None else self.body
        spoiled = answer.with_headers(Content_Encoding=None)
        if self.content_type is not None:
            spoiled = spoiled.with_headers(Content_Type=self.content_type)
        if self.gzip:
            spoiled = spoiled.with_headers(Content_Encoding="gzip")
            raw = gzip.compress(raw)
        return replace(spoiled, status=self.status or answer.status, body=raw)


@dataclass
class XmlDrop:
    """Remove one element (the ``pick``-th below the root, modulo) from an XML body."""

    pick: int
    dropped: list[str] = field(default_factory=list)

    def __call__(self, answer: Answer) -> Answer:
        try:
            root = ElementTree.fromstring(answer.plain())
        except ElementTree.ParseError:
            return answer
        parents = [(parent, child) for parent in root.iter() for child in parent]
        if not parents:
            return answer
        parent, child = parents[self.pick % len(parents)]
        parent.remove(child)
        self.dropped.append(f"{child.tag} {dict(child.attrib)}")
        return answer.with_plain(ElementTree.tostring(root, encoding="utf-8", xml_declaration=True))


@dataclass(frozen=True)
class Truncate:
    """Keep ``fraction`` of the wire body (Content-Length matches what is sent)."""

    fraction: float

    def __call__(self, answer: Answer) -> Answer:
        keep = int(len(answer.body) * self.fraction)
        return replace(answer, body=answer.body[: min(keep, max(len(answer.body) - 1, 0))])


@dataclass(frozen=True)
class ClaimGzip:
    """The plain body under ``Content-Encoding: gzip``."""

    def __call__(self, answer: Answer) -> Answer:
        return replace(answer.with_headers(Content_Encoding="gzip"), body=answer.plain())


@dataclass(frozen=True)
class HideGzip:
    """A gzip body without ``Content-Encoding``: the client gets compressed bytes as text."""

    def __call__(self, answer: Answer) -> Answer:
        body = gzip.compress(answer.plain())
        return replace(answer.with_headers(Content_Encoding=None), body=body)


@dataclass(frozen=True)
class BadGzipHeader:
    """The gzip magic number in front of the plain body, claiming gzip."""

    def __call__(self, answer: Answer) -> Answer:
        body = GZIP_MAGIC + b"\x08\x00" + answer.plain()
        return replace(answer.with_headers(Content_Encoding="gzip"), body=body)


@dataclass(frozen=True)
class CutConnection:
    """Send ``fraction`` of the promised body, then close the connection."""

    fraction: float

    def __call__(self, answer: Answer) -> Cut:
        keep = min(int(len(answer.body) * self.fraction), max(len(answer.body) - 1, 0))
        return Cut(answer, keep)


HTML_PAGE = (
    b"<!DOCTYPE html><html><head><title>Error</title></head>"
    b"<body><h1>Service Unavailable</h1><p>Please try later.</p></body></html>"
)
XML_ERROR = (
    b'<?xml version="1.0" encoding="utf-8"?><error><code>-1</code>'
    b"<message>Internal error</message></error>"
)
ATOM_FEED = (
    b'<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
    b'<title>x</title><entry><content type="application/xml"/></entry></feed>'
)


# -- hypothesis strategies -------------------------------------------------------------------


def wrong_values() -> st.SearchStrategy[Any]:
    """Values of the wrong type or range for any field: nulls, bools, odd numbers, containers."""
    specials: list[Any] = [
        None,
        True,
        False,
        0,
        -1,
        -0.5,
        1e308,
        -1e308,
        2**64,
        float("nan"),
        float("inf"),
        float("-inf"),
        Raw("1e999"),
        Raw("-1e999"),
        "",
        "NaN",
        "Infinity",
        "1e999",
        "12,5",
        "abc",
        "<html>",
        [],
        {},
        [1, 2],
        {"id": 1},
    ]
    return st.one_of(
        st.sampled_from(specials),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=6),
        st.lists(st.integers(min_value=-5, max_value=5), max_size=2),
        st.dictionaries(st.text(max_size=3), st.integers(min_value=-5, max_value=5), max_size=2),
    )


def json_mutations(keys: Sequence[str]) -> st.SearchStrategy[JsonMutation]:
    """Mutations aimed at ``keys`` (the fields a connector reads), anywhere, or at the root."""
    targets: st.SearchStrategy[str | None] = st.one_of(
        st.sampled_from(list(keys)), st.just("$"), st.none()
    )
    return st.builds(
        JsonMutation,
        op=st.sampled_from(["drop", "replace", "replace"]),
        key=targets,
        pick=st.integers(min_value=0, max_value=10_000),
        value=wrong_values(),
    )


def byte_spoilers(extra: Sequence[Spoiler] = ()) -> st.SearchStrategy[Spoiler]:
    """Broken bodies, wrong content types, lying compression and odd status codes (plus
    ``extra`` fixed spoilers a system has of its own, e.g. an Atom feed for 1C)."""
    odd_bodies = st.one_of(
        st.sampled_from([b"", b"{", b"[1,", b"null", b"\xff\xfe\x00garbage", HTML_PAGE, XML_ERROR]),
        st.binary(max_size=40),
    )
    fixed: list[Spoiler] = [
        *extra,
        ClaimGzip(),
        HideGzip(),
        BadGzipHeader(),
        Replace(body=HTML_PAGE, content_type="text/html"),
        Replace(body=XML_ERROR, content_type="application/xml"),
        Replace(content_type="text/html"),
        Replace(content_type="application/xml"),
        Replace(status=500, body=b""),
        Replace(status=502, body=HTML_PAGE, content_type="text/html"),
        Replace(status=404, body=HTML_PAGE, content_type="text/html"),
        Replace(status=401, body=b"", content_type="application/json"),
        Replace(status=401, body=b'{"message": "no"}', content_type="application/json"),
        Replace(status=400, body=b"{}", content_type="application/json"),
        Replace(status=200, body=b"", content_type="application/json"),
        Replace(status=200, body=b"{}", content_type="application/json", gzip=True),
    ]
    fractions = st.floats(min_value=0.0, max_value=0.99)
    return st.one_of(
        st.sampled_from(fixed),
        st.builds(Truncate, fractions),
        st.builds(CutConnection, fractions),
        st.builds(Replace, body=odd_bodies, content_type=st.sampled_from(["application/json"])),
        st.builds(
            Replace,
            status=st.sampled_from([200, 201, 204, 301, 400, 401, 403, 404, 409, 500, 503]),
            body=odd_bodies,
            content_type=st.sampled_from(["application/json", "text/html", "text/plain"]),
        ),
    )


# -- the proxy -------------------------------------------------------------------------------


@dataclass
class _Armed:
    route: re.Pattern[str]
    spoiler: Spoiler
    times: int | None


class HostileProxy:
    """A forwarding proxy on 127.0.0.1 whose armed spoilers rewrite matching answers.

    A route is a regular expression searched in ``"METHOD /raw/path?query"`` (percent-encoded
    as the client sent it), e.g. ``r"^GET .*/entity/product"``.
    """

    def __init__(self, upstream: str) -> None:
        self._upstream = URL(upstream).origin()
        self._armed: list[_Armed] = []
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.origin = ""
        self.forwarded = 0
        self.spoiled = 0
        self.seen: list[str] = []

    def url(self, upstream_url: str) -> str:
        """``upstream_url`` with the proxy's origin: the URL a connector should use."""
        target = URL(upstream_url)
        return str(URL(self.origin).with_path(target.path).with_query(target.query))

    def arm(self, spoiler: Spoiler, route: str = "", *, times: int | None = None) -> None:
        """Spoil answers whose request matches ``route`` (all of them, or the next ``times``)."""
        self._armed.append(_Armed(re.compile(route), spoiler, times))

    def disarm(self) -> None:
        self._armed.clear()

    async def __aenter__(self) -> HostileProxy:
        self._session = aiohttp.ClientSession(
            auto_decompress=False,
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=60),
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.origin = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _spoiler_for(self, line: str) -> Spoiler | None:
        for armed in self._armed:
            if armed.times == 0 or not armed.route.search(line):
                continue
            if armed.times is not None:
                armed.times -= 1
            return armed.spoiler
        return None

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        line = f"{request.method} {request.raw_path}"
        self.seen.append(line)
        body = await request.read()
        headers = CIMultiDict(
            (name, value)
            for name, value in request.headers.items()
            if name.lower() not in HOP_BY_HOP
        )
        headers["Host"] = request.host
        target = URL(str(self._upstream) + request.raw_path, encoded=True)
        try:
            async with self._session.request(
                request.method,
                target,
                headers=headers,
                data=body or None,
                allow_redirects=False,
            ) as upstream:
                raw = await upstream.read()
                kept = CIMultiDict(
                    (name, value)
                    for name, value in upstream.headers.items()
                    if name.lower() not in HOP_BY_HOP
                )
                answer = Answer(request.method, request.raw_path, upstream.status, kept, raw)
        except aiohttp.ClientError:
            # The upstream dropped the connection (an emulator fault): drop ours as well.
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=502)
        self.forwarded += 1
        spoiler = self._spoiler_for(line)
        spoiled: Answer | Cut = answer if spoiler is None else spoiler(answer)
        if spoiler is not None:
            self.spoiled += 1
        if isinstance(spoiled, Cut):
            return await _send_cut(request, spoiled)
        return web.Response(status=spoiled.status, body=spoiled.body, headers=spoiled.headers)


async def _send_cut(request: web.Request, cut: Cut) -> web.StreamResponse:
    response = web.StreamResponse(status=cut.answer.status, headers=cut.answer.headers)
    response.content_length = len(cut.answer.body)
    response.force_close()
    await response.prepare(request)
    await response.write(cut.answer.body[: cut.keep])
    if request.transport is not None:
        request.transport.close()
    return response


@asynccontextmanager
async def hostile(upstream_url: str) -> AsyncIterator[tuple[HostileProxy, str]]:
    """A proxy in front of ``upstream_url``; yields it and the URL to give the connector."""
    async with HostileProxy(upstream_url) as proxy:
        yield proxy, proxy.url(upstream_url)


async def outcome(call: Awaitable[T], hang_s: float) -> T | ConnectorError:
    """The result, or the connector error; anything else propagates and fails the test, and
    so does a connector that has not answered after ``hang_s`` seconds."""
    try:
        async with asyncio.timeout(hang_s):
            return await call
    except ConnectorError as exc:
        return exc
    except TimeoutError as exc:
        raise AssertionError(f"the connector hung for {hang_s} s on a malformed answer") from exc


def assert_classified(error: ConnectorError, system: str) -> None:
    """A malformed answer gives a transient or permanent error of that system, with a text."""
    assert isinstance(error, TransientError | PermanentError), repr(error)
    assert error.system == system
    assert str(error).strip(), "a connector error must say what was wrong"


#: what one hostile scenario in a child process may use: the emulator, the proxy and the
#: connector need about 300 MB; a connector that plans work from a lying count would need far more
CHILD_MEMORY = 600 * 1024 * 1024
CHILD_CPU_S = 12
_REPO = FilePath(__file__).resolve().parent.parent


def _limit_child() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))
    resource.setrlimit(resource.RLIMIT_CPU, (CHILD_CPU_S, CHILD_CPU_S))


async def run_capped(code: str, what: str, *, wait_s: float = 15.0) -> None:
    """Run ``code`` in a Python child capped in memory and CPU; fail the test if it hangs or
    does not exit 0 (``what`` says what would have hung)."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code,
        cwd=_REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        preexec_fn=_limit_child,
    )  # fmt: skip
    try:
        _, err = await asyncio.wait_for(child.communicate(), wait_s)
    except TimeoutError:
        child.kill()
        await child.wait()
        raise AssertionError(f"{what} hung") from None
    lines = err.decode(errors="replace").splitlines()
    errors = [line for line in lines if "Error" in line] or lines[-1:] or [""]
    assert child.returncode == 0, f"exit {child.returncode}: {errors[-1]}"
