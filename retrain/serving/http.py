"""MLflow's scoring protocol over the standard library's HTTP server, for any model with `predict(frame, params)`.

What `retrain serve-model` runs (flows/cli.py resolves and verifies the model; this module never imports MLflow and
never loads a model itself). The protocol is the one of `mlflow models serve`
(mlflow/pyfunc/scoring_server/__init__.py):

- `GET /ping`, `GET /health`: 200 once the model is loaded; `GET /version`: the version string given (MLflow's);
- `POST /invocations` with `Content-Type: application/json` and exactly one of `dataframe_split`
  (`{"columns": [...], "data": [[...], ...]}`), `dataframe_records` (`[{"col": value, ...}, ...]`), `instances`
  or `inputs` (records, or one column name -> list of values mapping), and optionally `"params": {"output": ...}`;
  or `text/csv` (a header line, then rows) or `application/vnd.apache.parquet`;
- the answer `{"predictions": ...}`: a list of numbers for a 1-D output, a list of records for a DataFrame
  (multiclass probabilities, the decision output);
- errors as MLflow writes them, `{"error_code": "BAD_REQUEST", "message": "..."}`: 400 for a bad body (naming the
  column, row or key), 404 / 405 for an unknown path or method, 411 / 413 / 415 for a missing length, a body over
  the limit, an unsupported content type; 500 (`INTERNAL_ERROR`) for anything else, logged with its traceback.

Per request it costs what MLflow's server costs minus its pandas work: the JSON is parsed with `json`, values are
checked (numeric columns hold numbers or null, every value a scalar, rows as wide as the columns) and at most 32
rows for a model with a fast row path (`ServingModel.fast`) go to its `predict_rows` as parsed lists, encoded straight
into the float array with no DataFrame (a model without `predict_rows` gets a one-block object DataFrame over a cached
column Index, ~20 µs, where pandas' own inference takes ~300 µs a frame); larger requests get pandas' typed frame.
"""

from __future__ import annotations

import io
import json
import logging
import signal
import socket
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from retrain.models.estimators import read_manifest

logger = logging.getLogger(__name__)

SMALL_ROWS = 32
"""Requests of at most this many rows are built as one object block (the fast row path encodes value by value)."""
MAX_BODY_BYTES = 64 * 1024 * 1024
"""Bodies above this size are refused (413) before they are read."""
INDEX_CACHE = 64
"""Column layouts whose pandas Index is kept, so a client's fixed layout costs one Index ever."""
JSON_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
"""The input fields of MLflow's JSON protocol; a request has exactly one."""
PARAMS_KEY = "params"
CONTENT_JSON, CONTENT_CSV, CONTENT_PARQUET = "application/json", "text/csv", "application/vnd.apache.parquet"
CONTENT_TYPES = (CONTENT_JSON, CONTENT_CSV, CONTENT_PARQUET)
ROUTES = {"/ping": "GET", "/health": "GET", "/version": "GET", "/invocations": "POST"}
"""Path -> the one method it answers."""
SCALARS = frozenset({str, int, float, bool, type(None)})
"""Value types a JSON row may hold (nested lists or objects are refused)."""
NUMBERS = frozenset({int, float, type(None)})
"""Value types of a numeric column (null is a missing value; booleans and text are refused)."""


class BindError(RuntimeError):
    """The server could not bind its address (port taken, address not on this host)."""


class Scorer(Protocol):
    """What the server needs of a model: its feature columns and `predict(rows, params)` (retrain's ServingModel)."""

    features: list[str]

    def predict(self, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> Any:
        """Scores or decisions for raw rows."""
        ...


@dataclass(frozen=True)
class Rows:
    """Checked JSON rows (lists in `columns` order) for a model's `predict_rows`: no DataFrame is built."""

    columns: tuple[str, ...]
    rows: list[list[Any]]


class RequestError(Exception):
    """A request the server refuses: its HTTP status, MLflow error code and a message naming the problem."""

    def __init__(self, message: str, status: int = 400, error_code: str = "BAD_REQUEST") -> None:
        super().__init__(message)
        self.status, self.error_code, self.message = status, error_code, message


@dataclass(frozen=True)
class Reply:
    """One HTTP answer: status, body bytes, content type and extra headers."""

    status: int
    body: bytes
    content_type: str = CONTENT_JSON
    headers: tuple[tuple[str, str], ...] = ()


def error_reply(exc: RequestError, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    """MLflow's error body, `{"error_code": ..., "message": ...}`, with the error's status."""
    body = json.dumps({"error_code": exc.error_code, "message": exc.message}).encode()
    return Reply(exc.status, body, CONTENT_JSON, headers)


class ScoringApp:
    """The protocol without sockets: routes a request (method, path, body, content type) to a Reply.

    `numeric` names the columns that must hold numbers (the model's manifest says which; empty: no check).
    `object_rows` (default: the model has a fast row path, `model.fast`) builds small requests as one object block.
    """

    def __init__(
        self,
        model: Scorer,
        *,
        numeric: Sequence[str] = (),
        object_rows: bool | None = None,
        version: str = "",
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.model = model
        self.numeric = frozenset(numeric)
        self.object_rows = getattr(model, "fast", None) is not None if object_rows is None else object_rows
        self.list_rows = (
            self.object_rows and getattr(model, "fast", None) is not None and hasattr(model, "predict_rows")
        )
        self.version = version.encode()
        self.max_body_bytes = max_body_bytes
        self._layouts: dict[tuple[str, ...], tuple[pd.Index, list[int]]] = {}

    def handle(self, method: str, path: str, body: bytes, content_type: str | None) -> Reply:
        """The answer to one request; never raises (a failure in the model is a 500 with its cause logged)."""
        route = path.split("?", 1)[0]
        allowed = ROUTES.get(route)
        try:
            if allowed is None:
                known = ", ".join(f"{m} {p}" for p, m in ROUTES.items())
                raise RequestError(f"no endpoint {route!r}; this server answers {known}", 404, "ENDPOINT_NOT_FOUND")
            if method != allowed:
                raise RequestError(f"{route} answers {allowed}, not {method}", 405, "METHOD_NOT_ALLOWED")
            if route == "/invocations":
                return self.invocations(body, content_type)
            return Reply(200, self.version if route == "/version" else b"\n")
        except RequestError as exc:
            return error_reply(exc, (("Allow", allowed),) if exc.status == 405 and allowed else ())
        except Exception as exc:  # the model failed on rows it accepted: the server stays up, the client sees why
            logger.error("POST /invocations failed: %s\n%s", exc, traceback.format_exc())
            return error_reply(RequestError(f"{type(exc).__name__}: {exc}", 500, "INTERNAL_ERROR"))

    def invocations(self, body: bytes, content_type: str | None) -> Reply:
        """Parse the rows and params, predict, answer `{"predictions": ...}`."""
        frame, params = self.parse(body, content_type)
        try:
            if isinstance(frame, Rows):
                output = self.model.predict_rows(frame.columns, frame.rows, params)  # type: ignore[attr-defined]
            else:
                output = self.model.predict(frame, params)
        except (ValueError, TypeError, KeyError) as exc:  # the model refused the rows: the client's to fix
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            raise RequestError(f"the model refused the input: {message}") from exc
        return Reply(200, json.dumps({"predictions": jsonable(output)}).encode())

    def parse(self, body: bytes, content_type: str | None) -> tuple[pd.DataFrame | Rows, dict[str, Any] | None]:
        """The rows (a DataFrame, or `Rows` for a small JSON request) and params from a JSON, CSV or Parquet body."""
        mime = media_type(content_type)
        if mime == CONTENT_JSON:
            return self.parse_json(body)
        if mime == CONTENT_CSV:
            return self.checked(read_table(pd.read_csv, io.BytesIO(body), "CSV")), None
        return self.checked(read_table(pd.read_parquet, io.BytesIO(body), "Parquet")), None

    def parse_json(self, body: bytes) -> tuple[pd.DataFrame | Rows, dict[str, Any] | None]:
        """MLflow's JSON request: exactly one input field, optional params."""
        try:
            request = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RequestError(f"the body is not valid JSON: {exc}") from exc
        if not isinstance(request, dict):
            raise RequestError(
                f"the body must be a JSON object with exactly one of {list(JSON_FORMATS)}, got a {json_type(request)}"
            )
        formats = [key for key in JSON_FORMATS if key in request]
        unknown = [key for key in request if key not in JSON_FORMATS and key != PARAMS_KEY]
        if len(formats) != 1 or unknown:
            extra = f"; unknown keys {unknown}" if unknown else ""
            raise RequestError(
                f"the body must have exactly one of {list(JSON_FORMATS)}, got keys {list(request)}{extra}"
            )
        params = request.get(PARAMS_KEY)
        if params is not None and not isinstance(params, dict):
            raise RequestError(f'\'params\' must be an object like {{"output": "decision"}}, got {params!r}')
        key = formats[0]
        columns, rows = rows_of(key, request[key])
        return self.frame(columns, rows), params

    def frame(self, columns: list[Any], rows: list[Any]) -> pd.DataFrame | Rows:
        """Checked JSON rows: `Rows` for a small request to a model with `predict_rows`, else a DataFrame."""
        if not rows:
            raise RequestError("the request has no rows")
        index, numeric = self.layout(columns)
        width = len(index)
        for i, row in enumerate(rows):
            if type(row) is not list or len(row) != width:
                raise RequestError(f"row {i} has {describe(row)} but there are {width} columns {list(index)}")
            if not SCALARS.issuperset(map(type, row)):
                j, value = next((j, v) for j, v in enumerate(row) if type(v) not in SCALARS)
                raise RequestError(f"column {index[j]!r} row {i}: expected a number, text or null, got {value!r}")
            for j in numeric:
                if type(row[j]) not in NUMBERS:
                    raise RequestError(f"column {index[j]!r} row {i}: expected a number or null, got {row[j]!r}")
        if self.list_rows and len(rows) <= SMALL_ROWS:
            return Rows(tuple(columns), rows)
        if self.object_rows and len(rows) <= SMALL_ROWS:
            values = np.empty((len(rows), width), dtype=object)
            values[:] = rows
            return pd.DataFrame(values, columns=index, dtype=object, copy=False)
        return pd.DataFrame(rows, columns=index)

    def layout(self, columns: list[Any]) -> tuple[pd.Index, list[int]]:
        """The cached column Index of a layout and the positions of its numeric columns (checked once per layout)."""
        key = tuple(columns)
        found = self._layouts.get(key)
        if found is not None:
            return found
        bad = [c for c in columns if not isinstance(c, str)]
        if bad:
            raise RequestError(f"column names must be text, got {bad}")
        duplicated = sorted({c for c in columns if columns.count(c) > 1})
        if duplicated:
            raise RequestError(f"columns {duplicated} appear more than once")
        found = (pd.Index(columns, dtype=object), [j for j, c in enumerate(columns) if c in self.numeric])
        if len(self._layouts) < INDEX_CACHE:
            self._layouts[key] = found
        return found

    def checked(self, frame: pd.DataFrame) -> pd.DataFrame:
        """A CSV or Parquet table whose numeric columns hold numbers (pandas typed them; a text value is named)."""
        if frame.empty:
            raise RequestError("the request has no rows")
        for column in frame.columns:
            if column not in self.numeric or frame[column].dtype.kind in "iuf":
                continue
            values = frame[column]
            if values.dtype.kind == "b":  # True / False: not numbers, as MLflow's schema check says
                bad = np.arange(len(values))
            else:
                unreadable = pd.to_numeric(values, errors="coerce").isna().to_numpy() & values.notna().to_numpy()
                bad = np.flatnonzero(unreadable)
            if len(bad):
                value = values.iloc[bad[0]]
                raise RequestError(f"column {column!r} row {bad[0]}: expected a number or null, got {value!r}")
        return frame


def numeric_columns(model_dir: Path) -> list[str]:
    """The numeric feature columns the model's manifest lists (LightGBM's; other formats list none: no check)."""
    numeric = read_manifest(model_dir).get("numeric") or []
    return [str(c) for c in numeric]


def media_type(content_type: str | None) -> str:
    """The media type of a Content-Type header; 415 when it is not one we read or its charset is not UTF-8."""
    mime, *parameters = [part.strip() for part in (content_type or "").split(";")]
    mime = mime.lower()
    if mime not in CONTENT_TYPES:
        raise RequestError(
            f"Content-Type {content_type!r} is not supported; use one of {list(CONTENT_TYPES)}", 415, "BAD_REQUEST"
        )
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() != "charset" or value.strip().strip('"').lower() != "utf-8":
            raise RequestError(f"Content-Type parameter {parameter!r}: only charset=utf-8 is read", 415, "BAD_REQUEST")
    return mime


def read_table(reader: Callable[[Any], pd.DataFrame], source: io.BytesIO, what: str) -> pd.DataFrame:
    """pandas' reader on the body; a body it cannot read is a 400 naming the format and pandas' reason."""
    try:
        return reader(source)
    except Exception as exc:  # pandas raises many types (EmptyDataError, ParserError, ArrowInvalid, ...)
        raise RequestError(f"the body is not a readable {what} table: {type(exc).__name__}: {exc}") from exc


def rows_of(key: str, data: Any) -> tuple[list[Any], list[Any]]:
    """(columns, rows as lists) from one JSON input field, in the layout pandas would give the same field."""
    if key == "dataframe_split":
        if not isinstance(data, dict) or "data" not in data or set(data) - {"columns", "data", "index"}:
            got = list(data) if isinstance(data, dict) else f"a {json_type(data)}"
            raise RequestError(f"dataframe_split must be an object with 'columns' and 'data' (got {got})")
        columns, rows = data.get("columns"), data["data"]
        if not isinstance(columns, list):
            raise RequestError("dataframe_split needs 'columns', the list of column names of 'data'")
        if not isinstance(rows, list):
            raise RequestError(f"dataframe_split 'data' must be a list of rows, got a {json_type(rows)}")
        return columns, rows
    if key == "dataframe_records":
        if not isinstance(data, list):
            raise RequestError(f"dataframe_records must be a list of records, got a {json_type(data)}")
        return records(key, data)
    if isinstance(data, dict):  # instances / inputs as columns: {"age": [39, 50], ...} or one row {"age": 39, ...}
        columns = list(data)
        values = list(data.values())
        if all(type(v) is list for v in values):
            lengths = {len(v) for v in values}
            if len(lengths) > 1:
                sizes = {c: len(v) for c, v in data.items()}
                raise RequestError(f"{key}: every column needs the same number of values, got {sizes}")
            return columns, [list(row) for row in zip(*values, strict=True)]
        return columns, [values]
    if isinstance(data, list) and all(type(r) is dict for r in data):
        return records(key, data)
    raise RequestError(
        f"{key} must be a list of records or an object of column -> values (rows without column names are "
        f"ambiguous: use dataframe_split), got a {json_type(data)}"
    )


def records(key: str, data: list[Any]) -> tuple[list[Any], list[Any]]:
    """Columns in order of first appearance and one row per record (a missing key is null), as pandas reads them."""
    for i, record in enumerate(data):
        if type(record) is not dict:
            raise RequestError(f"{key} record {i} must be an object of column -> value, got a {json_type(record)}")
    if not data:
        return [], []
    columns = list(data[0])
    if any(r.keys() != data[0].keys() for r in data[1:]):  # keys differ between records: their union, in order
        columns = list(dict.fromkeys(c for r in data for c in r))
    return columns, [[r.get(c) for c in columns] for r in data]


def jsonable(output: Any) -> Any:
    """MLflow's JSON form of a prediction: arrays as lists, a DataFrame as records, a Series as records."""
    if isinstance(output, pd.Series):
        output = output.to_frame()
    if isinstance(output, pd.DataFrame):
        names = [str(c) for c in output.columns]
        columns = [output.iloc[:, j].tolist() for j in range(output.shape[1])]
        return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]
    if isinstance(output, np.ndarray):
        return output.tolist()
    return output


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages."""
    names = {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def describe(row: Any) -> str:
    """'3 values' for a row, or what it is instead of a list."""
    return f"{len(row)} values" if type(row) is list else f"a {json_type(row)} instead of a list"


class Handler(BaseHTTPRequestHandler):
    """One connection (HTTP/1.1 keep-alive): reads a request, asks the server's ScoringApp, writes one buffer."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body leave at once, no 40 ms delayed-ACK stall
    server: ScoringServer

    def do_GET(self) -> None:
        """GET: /ping, /health, /version (others 404 / 405)."""
        self.answer(b"")

    def do_POST(self) -> None:
        """POST: /invocations (others 404 / 405)."""
        if self.headers.get("Transfer-Encoding", "").lower() not in ("", "identity"):
            self.refuse(RequestError("send the body with a Content-Length (chunked bodies are not read)", 411))
            return
        length = self.headers.get("Content-Length")
        if length is None or not length.strip().isdigit():
            self.refuse(RequestError(f"Content-Length is required, got {length!r}", 411))
            return
        size = int(length)
        if size > self.server.app.max_body_bytes:
            limit = self.server.app.max_body_bytes
            self.refuse(RequestError(f"the body has {size} bytes; this server reads at most {limit}", 413))
            return
        self.answer(self.rfile.read(size))

    def do_PUT(self) -> None:
        """Other methods: 405 on a known path, 404 elsewhere (the body, if any, is not read)."""
        self.close_connection = True
        self.answer(b"")

    do_DELETE = do_PATCH = do_OPTIONS = do_PUT  # noqa: N815

    def answer(self, body: bytes) -> None:
        """Route to the app and write its reply."""
        self.write(self.server.app.handle(self.command, self.path, body, self.headers.get("Content-Type")))

    def refuse(self, exc: RequestError) -> None:
        """An error before the body was read: reply, then close (the unread body would corrupt the next request)."""
        self.close_connection = True
        self.write(error_reply(exc))

    def write(self, reply: Reply) -> None:
        """Status line, headers and body in one write."""
        reason = self.responses.get(reply.status, ("",))[0]
        lines = [
            f"HTTP/1.1 {reply.status} {reason}",
            f"Content-Type: {reply.content_type}",
            f"Content-Length: {len(reply.body)}",
            *(f"{name}: {value}" for name, value in reply.headers),
        ]
        if self.close_connection:
            lines.append("Connection: close")
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + reply.body)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s %s -> %d (%d bytes)", self.command, self.path, reply.status, len(reply.body))

    def log_message(self, format: str, *args: Any) -> None:
        """http.server's own lines (malformed requests) go to our logger at DEBUG, not to stderr."""
        logger.debug("%s: " + format, self.address_string(), *args)


class ScoringServer(ThreadingHTTPServer):
    """A thread per connection, daemon threads (a stop never waits for an idle keep-alive client), a deep backlog."""

    daemon_threads = True
    request_queue_size = 128  # listen backlog: a burst of new connections waits instead of being refused

    def __init__(self, address: tuple[str, int], app: ScoringApp) -> None:
        self.app = app
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)

    @property
    def url(self) -> str:
        """http://HOST:PORT of the bound socket (the real port when 0 was asked for)."""
        host, port = self.server_address[:2]
        host = str(host)
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGINT before the server listens (while the model loads): unwinds like Ctrl-C, temp files removed."""


def _install(handler: Callable[[int, Any], None]) -> dict[int, Any]:
    """Our handler on SIGTERM and SIGINT (a signal the parent set to be ignored stays ignored); the previous ones."""
    return {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS if signal.getsignal(sig) is not signal.SIG_IGN}


@contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """While inside, SIGTERM and SIGINT raise `Stopped` in the main thread (SIGTERM would otherwise end the process
    on the spot, leaving the verified download behind); the previous handlers are restored after."""

    def on_signal(number: int, _frame: Any) -> None:
        raise Stopped(signal.Signals(number).name)

    previous = _install(on_signal)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve(app: ScoringApp, host: str, port: int, ready: Callable[[ScoringServer], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then stop accepting, close the socket and return (the caller exits 0).

    Call from the main thread (signal handlers); `ready` is called once the socket is bound and listening.
    """
    try:
        server = ScoringServer((host, port), app)
    except OSError as exc:
        raise BindError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    stop = threading.Event()
    stopping: list[str] = []

    def on_signal(number: int, _frame: Any) -> None:
        stopping.append(signal.Signals(number).name)
        stop.set()

    previous = _install(on_signal)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="serve", daemon=True)
    try:
        thread.start()
        if ready is not None:
            ready(server)
        while not stop.wait(1.0):
            if not thread.is_alive():
                raise RuntimeError(f"the HTTP server at {server.url} stopped on its own")
        logger.info("%s: stopping the server at %s", stopping[0] if stopping else "stop", server.url)
    finally:
        if thread.is_alive():
            server.shutdown()
        server.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
