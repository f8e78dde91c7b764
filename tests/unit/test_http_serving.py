"""`retrain serve-model`'s HTTP protocol (retrain/serving/http.py) on real saved models, over a real socket.

Every input format of MLflow's scoring protocol answers exactly what `ServingModel.predict` answers for the same
rows (scores, multiclass records, the decision output); every refused request gets MLflow's error JSON naming the
column, row or key; SIGTERM stops `serve` cleanly.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from retrain.models.estimators import build_model, save_model
from retrain.serving import http as serving_http
from retrain.serving.http import ScoringApp, ScoringServer, numeric_columns
from retrain.serving.predict import CONFIDENCE_FILE, ServingModel
from tests.unit.test_models import CATEGORICAL, LABELS, NUMERIC, PARAMS, frame, task_target

FEATURES = [*NUMERIC, *CATEGORICAL]
JSON = {"Content-Type": "application/json"}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One OpenMP/BLAS thread: the cores are shared."""
    with threadpool_limits(limits=1):
        yield


def saved(root: Path, family: str, task: str, labels: list[str], threshold: float) -> Path:
    """A model fitted on the test frame and saved as `save_model` writes it, with a confidence threshold."""
    X, y = frame()
    y = y if task == "binary" else task_target(X, task)
    params = PARAMS[family] if family == "lightgbm" else {"max_iter": 300}
    model = build_model(family, params, NUMERIC, CATEGORICAL, task=task).fit(X, y)
    directory = root / f"{family}-{task}"
    save_model(model, family, FEATURES, directory, task=task, labels=labels)
    (directory / CONFIDENCE_FILE).write_text(json.dumps({"threshold": threshold, "labels": labels}))
    return directory


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Binary and multiclass LightGBM (the fast row path) and a multiclass logreg (skops, pandas-typed frames)."""
    root = tmp_path_factory.mktemp("http-models")
    return {
        "binary": saved(root, "lightgbm", "binary", ["no", "yes"], 0.8),
        "multiclass": saved(root, "lightgbm", "multiclass", LABELS, 0.5),
        "logreg": saved(root, "logreg", "multiclass", LABELS, 0.5),
    }


class Client:
    """A keep-alive HTTP/1.1 connection to a ScoringServer running in a thread."""

    def __init__(self, app: ScoringApp) -> None:
        self.server = ScoringServer(("127.0.0.1", 0), app)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.port = self.server.server_address[1]
        self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def call(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, Any]:
        """(status, parsed JSON body or raw bytes) of one request on the kept connection."""
        self.connection.request(method, path, body=body, headers=headers or {})
        response = self.connection.getresponse()
        raw = response.read()
        if response.getheader("Connection", "").lower() == "close":
            self.connection.close()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw

    def invoke(self, payload: Any, content_type: str = "application/json") -> tuple[int, Any]:
        """POST /invocations with a JSON payload (or raw bytes)."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return self.call("POST", "/invocations", body, {"Content-Type": content_type})

    def close(self) -> None:
        self.connection.close()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def clients(models: dict[str, Path]) -> Iterator[dict[str, Client]]:
    """A running server per model, as `retrain serve-model` builds it (numeric columns from the manifest)."""
    started = {
        name: Client(ScoringApp(ServingModel(path), numeric=numeric_columns(path), version="9.9.9"))
        for name, path in models.items()
    }
    yield started
    for client in started.values():
        client.close()


def rows(n: int, seed: int = 4) -> pd.DataFrame:
    """Client rows with a missing category, a missing number and an unseen category (JSON-safe values)."""
    X = frame(n=n, seed=seed)[0].astype(object)
    X.loc[0, "c"] = None
    X.loc[min(1, n - 1), "a"] = None
    X.loc[min(2, n - 1), "b_cat"] = "never-seen"
    return X.where(X.notna(), None)


def split(X: pd.DataFrame) -> dict[str, Any]:
    return {"columns": list(X.columns), "data": X.to_numpy(dtype=object).tolist()}


def bodies(X: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """The same rows in every JSON input format of MLflow's protocol."""
    records = X.to_dict(orient="records")
    return {
        "dataframe_split": {"dataframe_split": split(X)},
        "dataframe_records": {"dataframe_records": records},
        "instances": {"instances": records},
        "inputs (records)": {"inputs": records},
        "inputs (columns)": {"inputs": {c: X[c].tolist() for c in X.columns}},
    }


def expected(model_dir: Path, X: pd.DataFrame, params: dict | None = None) -> Any:
    """What ServingModel.predict answers for the rows as a client DataFrame, in MLflow's JSON form."""
    typed = pd.DataFrame(X.to_numpy(dtype=object).tolist(), columns=list(X.columns))
    output = ServingModel(model_dir).predict(typed, params)
    return json.loads(json.dumps(serving_http.jsonable(output)))


@pytest.mark.parametrize("n", [1, 5, 40], ids=["single", "few", "batch"])
@pytest.mark.parametrize("model", ["binary", "multiclass", "logreg"])
def test_every_format_answers_what_the_model_predicts(
    clients: dict[str, Client], models: dict[str, Path], model: str, n: int
) -> None:
    X = rows(n)
    want = expected(models[model], X)
    for name, payload in bodies(X).items():
        status, body = clients[model].invoke(payload)
        assert status == 200, f"{name}: {body}"
        assert body == {"predictions": want}, f"{name}: predictions differ from ServingModel.predict"
    if model == "multiclass":
        assert set(want[0]) == set(LABELS), f"multiclass answers one probability per label: {want[0]}"


def test_csv_and_parquet_bodies(clients: dict[str, Client], models: dict[str, Path]) -> None:
    X = rows(40)
    want = expected(models["binary"], X)
    status, body = clients["binary"].invoke(X.to_csv(index=False).encode(), "text/csv; charset=utf-8")
    assert status == 200, body
    assert np.allclose(body["predictions"], want, rtol=1e-12, atol=0), "CSV (numbers re-read from text) differs"
    buffer = io.BytesIO()
    X.astype({"a": float, "b": float}).to_parquet(buffer)
    status, body = clients["binary"].invoke(buffer.getvalue(), "application/vnd.apache.parquet")
    assert (status, body) == (200, {"predictions": want}), body


def test_decision_output(clients: dict[str, Client], models: dict[str, Path]) -> None:
    X = rows(6)
    for model in ("binary", "multiclass"):
        status, body = clients[model].invoke({"dataframe_split": split(X), "params": {"output": "decision"}})
        assert status == 200, body
        assert body["predictions"] == expected(models[model], X, {"output": "decision"}), model
        assert set(body["predictions"][0]) == {"label", "confidence", "decision"}, body


def test_reordered_and_extra_columns_are_served(clients: dict[str, Client], models: dict[str, Path]) -> None:
    X = rows(3)
    shuffled = X[list(reversed(FEATURES))].assign(note="ignored")
    status, body = clients["binary"].invoke({"dataframe_split": split(shuffled)})
    assert (status, body) == (200, {"predictions": expected(models["binary"], X)}), body


def test_records_with_different_keys_fill_nulls(clients: dict[str, Client], models: dict[str, Path]) -> None:
    X = rows(2)
    records = X.to_dict(orient="records")
    del records[1]["c"]  # a record without a key: a missing value there, as pandas reads records
    status, body = clients["binary"].invoke({"dataframe_records": records})
    X.loc[1, "c"] = None
    assert (status, body) == (200, {"predictions": expected(models["binary"], X)}), body


BAD_REQUESTS = {
    "missing column": ({"dataframe_split": {"columns": ["a", "b", "c"], "data": [[1.0, 2, "x"]]}}, "['b_cat']"),
    "text in a numeric column": (
        {"dataframe_split": {"columns": FEATURES, "data": [[1.0, 2, "x", "p"], ["junk", 2, "x", "p"]]}},
        "column 'a' row 1: expected a number or null, got 'junk'",
    ),
    "boolean in a numeric column": (
        {"dataframe_records": [{"a": True, "b": 2, "c": "x", "b_cat": "p"}]},
        "column 'a' row 0",
    ),
    "nested value": (
        {"dataframe_split": {"columns": FEATURES, "data": [[1.0, 2, ["x"], "p"]]}},
        "column 'c' row 0: expected a number, text or null",
    ),
    "short row": ({"dataframe_split": {"columns": FEATURES, "data": [[1.0, 2, "x"]]}}, "row 0 has 3 values"),
    "two formats": ({"dataframe_split": {}, "inputs": {}}, "exactly one of"),
    "no format": ({"rows": []}, "exactly one of"),
    "unknown key": ({"dataframe_records": [], "param": {}}, "unknown keys ['param']"),
    "no rows": ({"dataframe_records": []}, "no rows"),
    "split without columns": ({"dataframe_split": {"data": [[1]]}}, "needs 'columns'"),
    "records not a list": ({"dataframe_records": {"a": 1}}, "must be a list of records"),
    "rows without names": ({"instances": [[1.0, 2, "x", "p"]]}, "use dataframe_split"),
    "ragged columns": ({"inputs": {"a": [1.0, 2.0], "b": [1]}}, "same number of values"),
    "duplicate column": ({"dataframe_split": {"columns": ["a", "a"], "data": [[1, 2]]}}, "['a'] appear more than once"),
    "unknown output": (
        {"dataframe_split": {"columns": FEATURES, "data": [[1.0, 2, "x", "p"]]}, "params": {"output": "proba"}},
        "params.output must be one of ['scores', 'decision'], got 'proba'",
    ),
    "params not an object": ({"dataframe_records": [], "params": "decision"}, "'params' must be an object"),
    "not JSON": (b"{not json", "not valid JSON"),
    "a JSON list": ([1, 2], "got a list"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_mlflow_error_json_naming_the_problem(clients: dict[str, Client], case: str) -> None:
    payload, needle = BAD_REQUESTS[case]
    status, body = clients["binary"].invoke(payload)
    assert status == 400, f"{case}: HTTP {status} {body}"
    assert body["error_code"] == "BAD_REQUEST" and needle in body["message"], f"{case}: {body}"


def test_csv_with_text_in_a_numeric_column_is_refused(clients: dict[str, Client]) -> None:
    status, body = clients["binary"].invoke(b"a,b,c,b_cat\n1.5,2,x,p\nabc,3,y,q\n", "text/csv")
    assert status == 400 and "column 'a' row 1: expected a number or null, got 'abc'" in body["message"], body
    status, body = clients["binary"].invoke(b"a,b,c,b_cat\n1.5,True,x,p\n", "text/csv")
    assert status == 400 and "column 'b' row 0: expected a number or null, got" in body["message"], body
    status, body = clients["binary"].invoke(b"", "text/csv")
    assert status == 400 and "not a readable CSV table" in body["message"], body


def test_routes_methods_and_content_types(clients: dict[str, Client]) -> None:
    client = clients["binary"]
    for path in ("/ping", "/health"):
        assert client.call("GET", path)[0] == 200, path
    assert client.call("GET", "/version") == (200, b"9.9.9"), "/version answers the version the server was given"
    status, body = client.call("GET", "/invocations")
    assert status == 405 and body["error_code"] == "METHOD_NOT_ALLOWED", body
    status, body = client.call("POST", "/ping", b"{}", JSON)
    assert status == 405, body
    status, body = client.call("GET", "/predict")
    assert status == 404 and body["error_code"] == "ENDPOINT_NOT_FOUND" and "/invocations" in body["message"], body
    status, body = client.call("DELETE", "/invocations")
    assert status == 405, body
    for content_type in ("text/plain", "application/json; charset=latin-1", ""):
        status, body = client.invoke({"dataframe_records": []}, content_type)
        assert status == 415 and "Content-Type" in body["message"], f"{content_type!r}: {status} {body}"
    assert client.call("GET", "/ping")[0] == 200, "the kept-alive connection still answers after the errors"


def test_length_and_size_limits(models: dict[str, Path]) -> None:
    client = Client(ScoringApp(ServingModel(models["binary"]), max_body_bytes=100))
    try:
        status, body = client.invoke({"dataframe_split": split(rows(5))})
        assert status == 413 and "at most 100" in body["message"], body
        with socket.create_connection(("127.0.0.1", client.port), timeout=10) as raw:
            raw.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\r\n")
            answer = raw.recv(4096).decode()
        assert answer.startswith("HTTP/1.1 411 ") and "Content-Length is required" in answer, answer
    finally:
        client.close()


def test_a_model_failure_is_a_500_and_the_server_stays_up(models: dict[str, Path]) -> None:
    class Broken:
        features = FEATURES

        def predict(self, frame: pd.DataFrame, params: dict | None = None) -> Any:
            raise RuntimeError("booster handle is gone")

    client = Client(ScoringApp(Broken()))  # type: ignore[arg-type]
    try:
        status, body = client.invoke({"dataframe_split": split(rows(2))})
        assert status == 500, body
        assert body == {"error_code": "INTERNAL_ERROR", "message": "RuntimeError: booster handle is gone"}, body
        assert client.call("GET", "/ping")[0] == 200, "the server keeps serving after a failed request"
    finally:
        client.close()


def test_small_requests_to_a_fast_model_skip_pandas_inference(models: dict[str, Path]) -> None:
    """The object-block frame (the fast row path) and pandas' typed frame give bit-identical scores."""
    model = ServingModel(models["binary"])
    fast, typed = ScoringApp(model), ScoringApp(model, object_rows=False)
    assert fast.object_rows and not ScoringApp(ServingModel(models["logreg"])).object_rows
    payload = json.dumps({"dataframe_split": split(rows(8))}).encode()
    assert (
        fast.handle("POST", "/invocations", payload, "application/json").body
        == typed.handle("POST", "/invocations", payload, "application/json").body
    )


def test_serve_binds_loopback_and_stops_on_sigterm(models: dict[str, Path]) -> None:
    """`serve` (what the CLI runs): answers, then SIGTERM closes the socket and it returns (the CLI exits 0)."""
    seen: dict[str, Any] = {}

    def ready(server: ScoringServer) -> None:
        seen["url"], seen["address"] = server.url, server.server_address

        def use_then_stop() -> None:
            connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
            connection.request("GET", "/ping")
            seen["ping"] = connection.getresponse().status
            connection.close()
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=use_then_stop, daemon=True).start()

    before = signal.getsignal(signal.SIGTERM)
    serving_http.serve(ScoringApp(ServingModel(models["binary"])), "127.0.0.1", 0, ready)
    assert seen["ping"] == 200 and seen["address"][0] == "127.0.0.1", seen
    assert signal.getsignal(signal.SIGTERM) == before, "serve restores the previous SIGTERM handler"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", seen["address"][1]), timeout=5).close()


def test_a_taken_port_is_a_bind_error_and_a_stop_while_loading_unwinds(models: dict[str, Path]) -> None:
    app = ScoringApp(ServingModel(models["binary"]))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(serving_http.BindError, match=f"cannot listen on 127.0.0.1:{port}"):
            serving_http.serve(app, "127.0.0.1", port)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(serving_http.Stopped, match="SIGTERM"), serving_http.interrupt_on_signals():
        os.kill(os.getpid(), signal.SIGTERM)  # while the CLI loads the model: unwinds (its temp dir is removed)
        threading.Event().wait(5)
    assert signal.getsignal(signal.SIGTERM) == before, "the loading-time handler is removed afterwards"


def test_concurrent_clients_get_their_own_answers(clients: dict[str, Client], models: dict[str, Path]) -> None:
    """A thread per connection, one shared model: 4 clients x 25 requests of different rows, each answer its own."""
    X = rows(100, seed=9)
    want = expected(models["binary"], X)
    port = clients["binary"].port
    errors: list[str] = []

    def client(offset: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for i in range(offset, 100, 4):
            connection.request("POST", "/invocations", json.dumps({"dataframe_split": split(X.iloc[[i]])}), JSON)
            got = json.loads(connection.getresponse().read())["predictions"]
            if got != [want[i]]:
                errors.append(f"row {i}: {got} != {want[i]}")
        connection.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors[:5]
