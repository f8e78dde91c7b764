"""The LightGBM booster compiled to native code by lleaves, built on the host that serves it, cached by model hash.

Why: a 1,000-tree Adult booster scores a single row in ~0.18 ms through `Booster.predict` and ~24k rows/s in a
batch; the same trees compiled by lleaves (LLVM) score a row in a few microseconds and ~300k rows/s on two cores,
with outputs equal to the booster's within 1e-12 (checked on a probe matrix before the compiled forest is used).

Safety: the compiler reads the booster text the serving loader already hash-checked and parsed (the `lgb.Booster`
in memory, `model_to_string`), never a shipped binary. Compiling (~30 s to minutes for 1,000 trees, mostly Python
holding the GIL) runs in a child process (`python -m retrain.serving.compiled`: booster text on stdin, the object
file's bytes on stdout), so serving threads never wait on it. The object is cached in a private directory
(`$XDG_CACHE_HOME/retrain/compiled`, 0700; a directory owned by someone else or group/other-writable is refused) as
`<key>.o` with a `<key>.o.sha256` sidecar; the key hashes the booster text, the lleaves and llvmlite versions, the
host CPU name and features, and the compile options. A cached object is read into memory, its sha256 checked against
the sidecar, and loaded from those bytes (no path is handed to LLVM, so nothing can change between check and load);
a mismatch is logged and the forest recompiled.

Modes (`RETRAIN_COMPILED`, or `retrain serve-model --compiled`): `background` (serve with the booster, swap to the
compiled forest when it is ready), `wait` (compile or load before the first prediction: benchmarks, tests), `off`.
Any failure (lleaves missing, a linear-tree model, a compile error, a probe mismatch) leaves the booster serving,
with one log line naming why.
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import logging
import math
import os
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from retrain.errors import ConfigError

logger = logging.getLogger(__name__)

MODES = ("background", "wait", "off")
"""How serving uses the compiled forest; see the module docstring."""
MODE_ENV = "RETRAIN_COMPILED"
"""Environment variable naming the mode where no flag does (the MLflow pyfunc loader, `retrain serve-model`)."""
DEFAULT_MODE = "background"
COMPILE_OPTIONS = {"fblocksize": 34, "finline": True, "fcodemodel": "large", "use_fp64": True, "raw_score": False}
"""lleaves' options (its defaults, fp64 so the output equals the booster's); part of the cache key."""
ROOT_FUNC = "forest_root"
COMPILE_TIMEOUT_SECONDS = 3600.0
"""A compile child still running after this is stopped and the booster keeps serving."""
TOLERANCE = 1e-12
"""The compiled forest is used only if it equals `Booster.predict` within this on the probe matrix."""
PROBE_ROWS = 512
_ENTRY = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32)
"""forest_root(data, out, start, end): raw addresses (cheaper per call than typed pointers)."""
_CHILDREN: set[subprocess.Popen[bytes]] = set()
_ATEXIT: list[bool] = []
_LLVM_LOCK = threading.Lock()


class CompileUnavailableError(Exception):
    """Why this model is served by the booster instead (the one log line says it)."""


def compile_mode(value: str | None = None) -> str:
    """The mode given, else `RETRAIN_COMPILED`, else `background`; an unknown value is an error naming it."""
    mode = (value or os.environ.get(MODE_ENV) or DEFAULT_MODE).strip().lower()
    if mode not in MODES:
        source = "the value" if value else MODE_ENV
        raise ConfigError(f"{source} {mode!r} is not a compiled-serving mode; use one of {list(MODES)}")
    return mode


def cache_dir() -> Path:
    """The private object cache, created 0700; refused when another user owns it or others can write it."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = base / "retrain" / "compiled"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise CompileUnavailableError(f"cache {path} is not a directory")
    if info.st_uid != os.getuid():
        raise CompileUnavailableError(f"cache {path} is owned by uid {info.st_uid}, not this user ({os.getuid()})")
    if info.st_mode & 0o022:
        raise CompileUnavailableError(f"cache {path} is group/other-writable (mode {oct(info.st_mode & 0o777)})")
    return path


def _llvm() -> Any:
    """llvmlite's binding with the native target initialised (safe to call repeatedly)."""
    import llvmlite.binding as llvm

    with _LLVM_LOCK:
        llvm.initialize()
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
    return llvm


def host_target() -> tuple[str, str]:
    """(CPU name, CPU features) of this host: the object is compiled for, and only loaded on, this CPU."""
    llvm = _llvm()
    try:
        features = llvm.get_host_cpu_features().flatten()
    except RuntimeError:
        features = ""
    return llvm.get_host_cpu_name(), features


def _versions() -> str:
    """lleaves and llvmlite versions (CompileUnavailableError when lleaves is not installed)."""
    try:
        return f"lleaves {version('lleaves')} llvmlite {version('llvmlite')}"
    except PackageNotFoundError as exc:
        raise CompileUnavailableError(f"{exc.name} is not installed") from None


def cache_key(booster_text: bytes) -> str:
    """sha256 over the booster text, the compiler versions, the host CPU and the options."""
    cpu, features = host_target()
    parts = [
        hashlib.sha256(booster_text).hexdigest(),
        _versions(),
        cpu,
        features,
        repr(sorted(COMPILE_OPTIONS.items())),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _target_machine() -> Any:
    """The host's target machine with lleaves' code model."""
    llvm = _llvm()
    cpu, features = host_target()
    target = llvm.Target.from_triple(llvm.get_process_triple())
    return target.create_target_machine(
        cpu=cpu, features=features, reloc="pic", codemodel=COMPILE_OPTIONS["fcodemodel"]
    )


def compile_object(booster_text: bytes) -> bytes:
    """The object file of the booster (what the compile child prints): lleaves' IR, LLVM's machine code."""
    from lleaves import compiler  # only the compile child imports the compiler

    options = {k: COMPILE_OPTIONS[k] for k in ("raw_score", "fblocksize", "finline", "use_fp64")}
    with tempfile.TemporaryDirectory(prefix="retrain-compile-") as tmp:
        model_file = Path(tmp) / "booster.txt"
        model_file.write_bytes(booster_text)
        module = compiler.compile_to_module(str(model_file), froot_func_name=ROOT_FUNC, **options)
    llvm = _llvm()
    engine = llvm.create_mcjit_compiler(module, _target_machine())
    captured: list[bytes] = []
    engine.set_object_cache(notify_func=lambda _module, buffer: captured.append(bytes(buffer)))
    engine.finalize_object()
    if not captured:
        raise RuntimeError("LLVM produced no object code")
    return captured[0]


class CompiledForest:
    """Scores encoded rows (float64, the booster's column order) with the compiled forest; threads split the rows."""

    def __init__(self, obj: bytes, n_features: int, n_outputs: int) -> None:
        llvm = _llvm()
        engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), _target_machine())
        engine.set_object_cache(getbuffer_func=lambda _module: obj)
        engine.finalize_object()
        engine.run_static_constructors()
        self._engine = engine  # keeps the machine code alive
        self._entry = _ENTRY(engine.get_function_address(ROOT_FUNC))
        self.n_features, self.n_outputs = n_features, n_outputs
        self._pool: ThreadPoolExecutor | None = None
        self._pool_size = 0
        self._pool_lock = threading.Lock()

    def predict(self, encoded: np.ndarray, threads: int = 1) -> np.ndarray:
        """What `Booster.predict(encoded)` returns: (n,) or (n, classes); the C call releases the GIL."""
        data = self._rows(encoded)
        rows = data.shape[0]
        out = np.empty(rows * self.n_outputs, dtype=np.float64)
        src, dst = data.ctypes.data, out.ctypes.data
        if threads <= 1 or rows < 2 * threads:
            self._entry(src, dst, 0, rows)
        else:
            pool = self._executor(threads)
            jobs = [pool.submit(self._entry, src, dst, i, j) for i, j in _chunks(rows, threads)]
            for job in jobs:
                job.result()
        return self._shaped(out, rows)

    def predict_encoding(self, encode: Callable[[int, int], np.ndarray], rows: int, threads: int) -> np.ndarray:
        """`predict(encode(0, rows), threads)`, each thread encoding the rows it scores (`encode(start, end)`).

        Encoding (NumPy casts and Arrow lookups, which release the GIL) overlaps the forest walk of other chunks
        instead of running before it on one thread. Every row is encoded and walked the same way whatever chunk it
        falls in, so the output is bit-identical to `predict(encode(0, rows), threads)`.
        """
        out = np.empty(rows * self.n_outputs, dtype=np.float64)
        row_bytes = self.n_outputs * out.itemsize

        def score(start: int, end: int) -> None:
            data = self._rows(encode(start, end))
            if data.shape[0] != end - start:
                raise ValueError(f"encode({start}, {end}) returned {data.shape[0]} rows")
            self._entry(data.ctypes.data, out.ctypes.data + start * row_bytes, 0, end - start)

        if threads <= 1 or rows < 2 * threads:
            score(0, rows)
        else:
            pool = self._executor(threads)
            jobs = [pool.submit(score, i, j) for i, j in _chunks(rows, threads)]
            for job in jobs:
                job.result()
        return self._shaped(out, rows)

    def _rows(self, encoded: np.ndarray) -> np.ndarray:
        """The encoded rows as C-contiguous float64 (no copy when they already are), shape checked."""
        data = np.ascontiguousarray(encoded, dtype=np.float64)
        if data.ndim != 2 or data.shape[1] != self.n_features:
            raise ValueError(f"expected rows of {self.n_features} encoded features, got shape {data.shape}")
        return data

    def _shaped(self, out: np.ndarray, rows: int) -> np.ndarray:
        return out if self.n_outputs == 1 else out.reshape(rows, self.n_outputs)

    def _executor(self, threads: int) -> ThreadPoolExecutor:
        """A pool kept for the process (a pool per batch costs a thread start per chunk)."""
        with self._pool_lock:
            if self._pool is None or self._pool_size != threads:
                self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="compiled-forest")
                self._pool_size = threads
            return self._pool


def _chunks(rows: int, threads: int) -> list[tuple[int, int]]:
    """(start, end): one contiguous range of rows per thread (more, smaller chunks measured slower on 2 cores)."""
    step = math.ceil(rows / threads)
    return [(i, min(i + step, rows)) for i in range(0, rows, step)]


def _read_private(path: Path) -> bytes | None:
    """A cache file's bytes if it is a regular file of this user (no symlink followed), else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            return None
        return handle.read()


def _write_private(path: Path, data: bytes) -> None:
    """Write atomically (temp file in the same directory, 0600, then rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached_object(directory: Path, key: str) -> bytes | None:
    """The cached object whose bytes match its sidecar sha256; a mismatch is logged (and recompiled by the caller)."""
    obj = _read_private(directory / f"{key}.o")
    if obj is None:
        return None
    recorded = (_read_private(directory / f"{key}.o.sha256") or b"").decode(errors="replace").strip()
    actual = hashlib.sha256(obj).hexdigest()
    if actual != recorded:
        logger.warning(
            "compiled cache %s: sha256 %s differs from its sidecar %r: recompiling",
            directory / f"{key}.o",
            actual[:12],
            recorded[:12],
        )
        return None
    return obj


def store_object(directory: Path, key: str, obj: bytes) -> None:
    """Cache the object and its sha256 sidecar."""
    _write_private(directory / f"{key}.o", obj)
    _write_private(directory / f"{key}.o.sha256", hashlib.sha256(obj).hexdigest().encode())


def compile_in_child(booster_text: bytes, timeout: float = COMPILE_TIMEOUT_SECONDS) -> bytes:
    """Run the compiler in a child process (it holds the GIL for tens of seconds); its stdout is the object."""
    child = subprocess.Popen(
        [sys.executable, "-I", "-m", "retrain.serving.compiled"],  # -I: no cwd or PYTHON* variables on the path
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    if not _ATEXIT:
        atexit.register(_stop_children)
        _ATEXIT.append(True)
    _CHILDREN.add(child)
    try:
        out, err = child.communicate(booster_text, timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        raise CompileUnavailableError(f"the compile did not finish within {timeout:.0f} s") from None
    finally:
        _CHILDREN.discard(child)
    if child.returncode != 0 or not out:
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise CompileUnavailableError(f"the compile child failed (exit {child.returncode}): {tail[0]}")
    return out


def _stop_children() -> None:
    """A compile still running when serving ends is stopped (it would otherwise burn a core for nothing)."""
    for child in list(_CHILDREN):
        child.kill()


def unsupported(booster_text: bytes) -> str | None:
    """Why lleaves cannot compile this booster (linear trees), or None."""
    if b"is_linear=1" in booster_text:
        return "the booster has linear trees (linear_tree), which lleaves does not compile"
    return None


def probe_matrix(n_features: int, categorical_sizes: list[int], rows: int = PROBE_ROWS) -> np.ndarray:
    """Deterministic rows spanning many scales, NaN and unseen category codes, to compare forest and booster on."""
    rng = np.random.default_rng(0)
    n_numeric = n_features - len(categorical_sizes)
    scale = 10.0 ** rng.integers(-2, 6, size=(rows, n_numeric))
    numeric = rng.standard_normal((rows, n_numeric)) * scale + np.abs(rng.standard_normal((rows, n_numeric))) * scale
    cats = [rng.integers(0, size + 2, size=rows).astype(np.float64) for size in categorical_sizes]
    out = np.column_stack([numeric, *cats]) if cats else numeric
    out[rng.random(out.shape) < 0.1] = np.nan
    return out


class CompiledBooster:
    """A booster's compiled forest: None until ready (`forest`), built in the background or on the spot."""

    def __init__(self, booster: Any, categorical_sizes: list[int]) -> None:
        self.booster = booster
        self.categorical_sizes = categorical_sizes
        self.forest: CompiledForest | None = None
        self.reason: str | None = None
        self.seconds: dict[str, float] = {}
        self._thread: threading.Thread | None = None

    def start(self, mode: str) -> CompiledBooster:
        """`wait`: build now; `background`: build on a daemon thread; `off`: nothing."""
        if mode == "wait":
            self.build()
        elif mode == "background":
            self._thread = threading.Thread(target=self.build, name="compile-forest", daemon=True)
            self._thread.start()
        return self

    def wait(self, timeout: float | None = None) -> CompiledForest | None:
        """Block until a background build ends; the forest (None if it fell back)."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.forest

    def build(self) -> None:
        """Load from the cache or compile, check against the booster, then swap in; on failure log why, once."""
        import time

        try:
            start = time.perf_counter()
            text = self.booster.model_to_string().encode()
            why = unsupported(text)
            if why is not None:
                raise CompileUnavailableError(why)
            directory = cache_dir()
            key = cache_key(text)
            obj = cached_object(directory, key)
            source = "cache"
            if obj is None:
                obj = compile_in_child(text)
                store_object(directory, key, obj)
                source = "compiled"
                self.seconds["compile"] = time.perf_counter() - start
            n_features = self.booster.num_feature()
            n_outputs = self.booster.num_model_per_iteration()
            forest = CompiledForest(obj, n_features, n_outputs)
            probe = probe_matrix(n_features, self.categorical_sizes)
            want = np.asarray(self.booster.predict(probe, num_threads=1))
            got = forest.predict(probe).reshape(want.shape)
            worst = float(np.nanmax(np.abs(got - want))) if want.size else 0.0
            if not np.array_equal(np.isnan(got), np.isnan(want)) or worst > TOLERANCE:
                raise CompileUnavailableError(
                    f"the compiled forest differs from the booster by {worst:.3g} on the probe"
                )
            self.seconds["ready"] = time.perf_counter() - start
            self.forest = forest
            logger.info("compiled forest ready (%s, %.1f s): serving with it", source, self.seconds["ready"])
        except CompileUnavailableError as exc:
            self.reason = str(exc)
            logger.warning("serving with the LightGBM booster, not the compiled forest: %s", exc)
        except Exception as exc:  # a compiler error must never stop serving
            self.reason = f"{type(exc).__name__}: {exc}"
            logger.warning("serving with the LightGBM booster, not the compiled forest: %s", self.reason)


def main() -> int:
    """The compile child: booster text on stdin, object bytes on stdout."""
    text = sys.stdin.buffer.read()
    sys.stdout.buffer.write(compile_object(text))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
