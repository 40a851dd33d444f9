"""Values as content-addressed pickles, and what a run changed in its namespace (SPEC §3).

Shared by the local runner and the remote worker so both agree on a component's outputs:
the names it binds, rebinds or deletes, and the objects it mutates in place.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import pickle
import re
import sys
import types
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, NamedTuple

import cloudpickle

PROTOCOL = 5


def type_name(value: Any) -> str:
    """How messages name a value's type: qualified, except for builtins."""
    return f"{type(value).__module__}.{type(value).__qualname__}".removeprefix("builtins.")


class UnpicklableValue(Exception):
    """A value cannot be serialised; the message names the variable and its type."""

    def __init__(self, name: str, value: Any, reason: BaseException) -> None:
        self.name = name
        self.type_name = type_name(value)
        super().__init__(f"{name!r} ({self.type_name}) cannot be pickled: {reason}")


@dataclass(frozen=True)
class Blob:
    """A pickled value whose large buffers (numpy arrays, bytes-likes) stay out of band.

    Out-of-band buffers are views, not copies, until the blob is written or loaded; the
    digest covers the pickle stream and every buffer, so it names the content.
    """

    stream: bytes
    buffers: tuple[memoryview, ...]
    digest: str

    @property
    def size(self) -> int:
        return len(self.stream) + sum(b.nbytes for b in self.buffers)


# A buffer larger than PIECE is hashed as the SHA-256 of each PIECE, on every core at once
# (hashlib releases the GIL): a single SHA-256 pass over 100 MB is ~60 ms here, on one core.
PIECE = 8 << 20
_hashers: tuple[int, ThreadPoolExecutor] | None = None


def _pieces(buffer: memoryview) -> bytes:
    """The digests of a large buffer's pieces, in order."""
    global _hashers
    if _hashers is None or _hashers[0] != os.getpid():  # threads do not survive a fork
        _hashers = (os.getpid(), ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="digest"))
    view = buffer.cast("B") if buffer.format != "B" or buffer.ndim != 1 else buffer
    pieces = [view[at : at + PIECE] for at in range(0, view.nbytes, PIECE)]
    return b"".join(_hashers[1].map(lambda piece: hashlib.sha256(piece).digest(), pieces))


# What `_digest` gives, as a blob file is named in a store: the cache's and a worker's alike.
DIGEST = re.compile(r"[0-9a-f]{64}")


def _digest(stream: bytes, buffers: Iterable[memoryview]) -> str:
    h = hashlib.sha256(stream)
    for buffer in buffers:
        h.update(len(buffer).to_bytes(8, "little"))
        h.update(_pieces(buffer) if buffer.nbytes > PIECE else buffer)
    return h.hexdigest()


_DYNAMIC_CODE = "<dynamic-code>"
_ABSENT = object()
# While a value is unpickled: the namespace it is loaded into (see `_NotebookGlobals`).
_loading_into: ContextVar[dict[str, Any] | None] = ContextVar("linkkernel_loading_into", default=None)


# ipykernel's cell files: <tmp>/ipykernel_<pid>/<murmur hash of the cell's code>.py
CELL_FILE = re.compile(r"ipykernel_(\d+)[\\/](-?\d+)\.py$")


def cell_file(cell_hash: str) -> str:
    """This process's file for the cell code whose hash is `cell_hash`: the name ipykernel's
    `get_file_name` gives it here, the one JupyterLab's debugger sets breakpoints in."""
    from ipykernel.compiler import get_tmp_directory  # ~0.1 s: only where a cell's code loads

    return os.path.join(get_tmp_directory(), f"{cell_hash}.py")


def twin_path(filename: str) -> str | None:
    """Where this process would compile the code of a kernel process's cell file (this
    process's own, or another's); None for any other file."""
    cell = CELL_FILE.search(filename)
    return None if cell is None else cell_file(cell[2])


def _code_in_cell(code: types.CodeType, cell_hash: str) -> types.CodeType:
    """Code compiled from a notebook cell, in this process's file for that cell."""
    return code.replace(co_filename=cell_file(cell_hash))


def _code_in_file(code: types.CodeType, filename: str) -> types.CodeType:
    """Code in the file it was compiled from; a cell's in this process's file of that cell
    (blobs written before code pickled by cell hash, see `_code_reduced`)."""
    return code.replace(co_filename=twin_path(filename) or filename)


def _new_namespace() -> dict[str, Any]:
    """An empty notebook namespace (a `__main__` module's), for a value loaded on its own."""
    return types.ModuleType("__main__").__dict__


def _namespace_being_loaded() -> dict[str, Any]:
    namespace = _loading_into.get()
    return _new_namespace() if namespace is None else namespace


class _NotebookGlobals:
    """Stands, in a pickle, for the globals of a function defined in a notebook cell or a
    component (globals named `__main__`). Unpickled, it is the namespace the value is loaded
    into, so the function reads the globals of the component that uses it, as if every
    ancestor had run in one namespace (SPEC §3): a child that rebinds `scale` changes what its
    parent's `scaled()` computes. cloudpickle would give it a dict of its own instead, holding
    the values it read when its parent ran."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return _namespace_being_loaded, ()


_NOTEBOOK_GLOBALS = _NotebookGlobals()


def _with_notebook_globals(reduced: tuple) -> tuple:
    """cloudpickle's reduction of a function, `(make, (code, globals, ...), (state, slots),
    ...)`, with its globals left to the namespace it is loaded into: none of their values
    are pickled, so a function's digest changes with its code, not with the globals it reads."""
    make, (code, _, *args), (state, slots), *rest = reduced
    return (make, (code, _NOTEBOOK_GLOBALS, *args), (state, {**slots, "__globals__": {}}), *rest)


def _defined_in_notebook(function: Any) -> bool:
    return isinstance(function, types.FunctionType) and function.__globals__.get("__name__") == "__main__"


def _lru_cached(function: types.FunctionType, parameters: dict[str, Any], attributes: dict[str, Any]) -> Any:
    """A `functools.lru_cache` wrapper of `function` again, with an empty cache."""
    wrapper = functools.lru_cache(**parameters)(function)
    wrapper.__dict__.update(attributes)
    return wrapper


# The code of every function functools.singledispatch makes; such a function holds a weak
# dictionary (its dispatch cache), which cannot be pickled.
_SINGLE_DISPATCH_CODE = functools.singledispatch(lambda value: value).__code__
_SINGLE_DISPATCH_MADE = ("register", "dispatch", "registry", "_clear_cache", "__wrapped__")


def _single_dispatched(function: types.FunctionType, registry: dict, attributes: dict[str, Any]) -> Any:
    """A `functools.singledispatch` function of `function` again, with its implementations."""
    dispatcher = functools.singledispatch(function)
    for cls, implementation in registry.items():
        dispatcher.register(cls, implementation)
    dispatcher.__dict__.update(attributes)
    return dispatcher


def _cached_property(function: Callable[..., Any], attributes: dict[str, Any]) -> functools.cached_property:
    """A `functools.cached_property` again: before Python 3.12 it holds a lock, which cannot
    be pickled, so that every notebook class using one, and its instances, could not be."""
    prop = functools.cached_property(function)
    prop.__dict__.update(attributes)
    return prop


def _memoryview_again(buffer: Any, format: str, shape: tuple[int, ...]) -> memoryview:
    """A memoryview again (cloudpickle makes it bytes), over a copy of what it showed;
    read-only when the buffer comes read-only (protocol 5 keeps which)."""
    return memoryview(buffer).cast("B").cast(format, shape)


def _memoryview_reduced(view: memoryview) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """How a memoryview pickles: its bytes out of band, its format and shape (a view's
    strides are not kept: it comes back contiguous). A format `cast` cannot make again
    (a struct of several fields, an explicit byte order) does not pickle."""
    try:
        memoryview(bytes(view.itemsize)).cast(view.format)
    except (TypeError, ValueError) as exc:
        raise pickle.PicklingError(f"a memoryview of format {view.format!r} cannot be rebuilt: {exc}") from None
    if view.c_contiguous:
        data = pickle.PickleBuffer(view)
    else:
        data = pickle.PickleBuffer(view.tobytes() if view.readonly else bytearray(view.tobytes()))
    return _memoryview_again, (data, view.format, view.shape)


def _set_of(cls: type, items: set) -> set | frozenset:
    """A set subclass again, with its items, without calling its own `__init__` or
    `__new__` (pickle calls `cls(items)`, which a subclass taking other arguments empties).
    `items` is an exact set, so its stream shows it holds one (see `digests_as_loaded`)."""
    if issubclass(cls, frozenset):
        return frozenset.__new__(cls, items)
    made = set.__new__(cls)
    set.update(made, items)
    return made


def _reduced_set_subclass(obj: set | frozenset) -> tuple[Callable[..., Any], tuple[Any, ...], Any] | None:
    """How an instance of a set subclass pickles, unless its class says how itself."""
    cls = type(obj)
    if cls.__reduce_ex__ is not object.__reduce_ex__ or cls.__reduce__ not in (set.__reduce__, frozenset.__reduce__):
        return None
    return _set_of, (cls, set(obj)), obj.__getstate__()


def _file_reduced(file: io.IOBase) -> tuple[Any, ...]:
    """An open file is this process's own: cloudpickle would make an open text file a copy
    of its text (a StringIO). Kept in memory instead, children get the file itself, as in one
    kernel. A closed one, what `with open(...) as f` leaves, holds nothing of the process and
    comes back closed as it was, so that such a component is cached like any other.
    sys.stdout and sys.stderr are left to cloudpickle (they are looked up again)."""
    if file.closed:
        try:
            return _closed_file, (type(file), file.name, file.mode, getattr(file, "encoding", None))
        except (AttributeError, ValueError):  # not a file of the file system (a wrapped BytesIO)
            raise pickle.PicklingError("a closed stream of this process") from None
    if file not in (sys.stdout, sys.stderr):
        raise pickle.PicklingError("an open file belongs to this process")
    return cloudpickle.cloudpickle._file_reduce(file)


def _closed_file(kind: type, name: str | int, mode: str, encoding: str | None) -> io.IOBase:
    """A closed file of the type, name, mode and encoding pickled: opened on os.devnull (a
    file that exists everywhere) with that mode, renamed, then closed."""
    file = open(os.devnull, mode.replace("x", "w"), buffering=0 if kind is io.FileIO else -1,
                encoding=None if "b" in mode else encoding)
    raw = file if isinstance(file, io.FileIO) else getattr(file, "buffer", file).raw
    raw.name = name
    if isinstance(file, io.TextIOWrapper):
        file.mode = mode
    file.close()
    return file


def _refused_proxy(proxy: Any) -> tuple[Any, ...]:
    """A weak proxy pickles through its referent, coming back as a copy of that, another
    type; kept in memory instead, children get the proxy itself."""
    raise pickle.PicklingError("a weak proxy refers to an object of this process")


def _without_pandas_cache(obj: Any) -> tuple[Any, ...] | None:
    """How a pandas object holding derived values in `_cache` pickles: without them.

    pandas' `cache_readonly` keeps what it derives (a datetime array's unit, a nullable
    dtype's numpy dtype) in the object's `_cache`, and the arrays and dtypes pickle their
    whole `__dict__`: reading a tz-aware column changed its frame's pickle, so a child that
    only read the frame made it its output. A fresh object has no `_cache`, and pandas' own
    Index and Arrow arrays leave it out of their pickles too. None: nothing to leave out."""
    attributes = getattr(obj, "__dict__", None)
    if not isinstance(attributes, dict) or "_cache" not in attributes:
        return None
    reduced = obj.__reduce_ex__(PROTOCOL)
    if not isinstance(reduced, tuple) or len(reduced) < 3:
        return None
    # pickled as an object that never had a `__dict__` pickles, when `_cache` was all of it
    kept = {k: v for k, v in attributes.items() if k != "_cache"}
    state = reduced[2]
    if state is attributes:
        state = kept or None
    elif isinstance(state, tuple) and any(part is attributes for part in state):
        state = tuple(kept if part is attributes else part for part in state if kept or part is not attributes)
    else:
        return None
    return (*reduced[:2], state, *reduced[3:])


def _callback_registry_reduced(registry: Any) -> tuple[Any, ...]:
    """How matplotlib's CallbackRegistry (every figure, axes and artist holds one) pickles:
    as its own `__getstate__` says, but the same each time. That draws the next callback id
    from the registry's counter, so a figure pickled otherwise every time and a child that
    only read its parent's figure made it its output. Here the next id is the one after the
    callbacks it keeps (the others are dropped, as matplotlib drops them), and the state's
    keys are in one order, which a registry rebuilt from a pickle does not keep."""
    callbacks = {
        signal: {cid: proxy() for cid, proxy in proxies.items() if cid in registry._pickled_cids}
        for signal, proxies in registry.callbacks.items()
    }
    state = {**vars(registry), "callbacks": callbacks, "_func_cid_map": None}
    state["_cid_gen"] = max((cid for kept in callbacks.values() for cid in kept), default=0) + 1
    return _callback_registry_again, (type(registry), dict(sorted(state.items())))


def _callback_registry_again(cls: type, state: dict[str, Any]) -> Any:
    """A CallbackRegistry again (its name in a stream marks a figure, see `_UNSETTLED_MARKS`)."""
    registry = cls.__new__(cls)
    registry.__setstate__(state)
    return registry


def _reducers_of_imported_libraries() -> None:
    """Add to `_REDUCERS` those of libraries' types, once a library is imported (this
    module imports none of them)."""
    cbook = sys.modules.get("matplotlib.cbook")
    registry = getattr(cbook, "CallbackRegistry", None)
    if registry is not None and registry not in _REDUCERS:
        _REDUCERS[registry] = _callback_registry_reduced


def _cached_property_reduced(prop: functools.cached_property) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    return _cached_property, (prop.func, {k: v for k, v in vars(prop).items() if k not in ("func", "lock")})


# How the pickler reduces (or refuses) values of these exact types instead of cloudpickle.
# Looked up in `reducer_override`, which every object of a value goes through: one lookup is
# what it costs them (in front of cloudpickle's dispatch table, a ChainMap, it cost more).
_REDUCERS: dict[type, Callable[[Any], Any]] = {
    memoryview: _memoryview_reduced,
    functools.cached_property: _cached_property_reduced,
    **{kind: _file_reduced for kind in (io.TextIOWrapper, io.BufferedReader, io.BufferedWriter, io.BufferedRandom, io.FileIO)},
    **{proxy_type: _refused_proxy for proxy_type in weakref.ProxyTypes},
}


_cloudpickle_class_setstate = cloudpickle.cloudpickle._class_setstate
# While values are loaded for a component's run: each class attribute a load replaced, as
# (class, name, value before, value installed); see `classes_put_back`.
_replaced_in_classes: ContextVar[list[tuple[type, str, Any, Any]] | None] = ContextVar(
    "linkkernel_replaced_in_classes", default=None
)


# Classes a load made anew (no class of their definition lived in this process): nothing
# held them before, so there is nothing to give back to them after the run.
_new_classes: weakref.WeakSet[type] = weakref.WeakSet()


def _class_skeleton(*args: Any) -> type:
    """cloudpickle's class skeleton (`_make_skeleton_class(..., class_tracker_id, extra)`),
    noting whether this load made it anew or found the class of that definition living."""
    living = cloudpickle.cloudpickle._DYNAMIC_CLASS_TRACKER_BY_ID.get(args[4])
    cls = cloudpickle.cloudpickle._make_skeleton_class(*args)
    if cls is not living:
        _new_classes.add(cls)
    return cls


def _class_setstate_noted(cls: type, state: tuple[dict[str, Any], dict[str, Any]]) -> type:
    """cloudpickle's setstate of a class, noting what it replaced (see `classes_put_back`).

    cloudpickle keeps one class per definition in a process, so that instances stay
    instances of it, and loading one sets its methods again, bound to the namespace loaded
    into; once the run that needed them ends, the class must go back to the methods it had.
    A class the load made anew had none: emptied after the run, a child's only read of a
    class the notebook no longer held made a class without methods its output."""
    replaced = None if cls in _new_classes else _replaced_in_classes.get()
    _new_classes.discard(cls)
    attributes = {name: value for name, value in state[0].items() if not _already_set(cls, name, value)}
    before = {name: cls.__dict__.get(name, _ABSENT) for name in attributes if name != "_abc_impl"}
    cls = _cloudpickle_class_setstate(cls, (attributes, state[1]))
    if replaced is not None:
        replaced.extend((cls, name, old, cls.__dict__.get(name, _ABSENT)) for name, old in before.items())
    return cls


def _already_set(cls: type, name: str, value: Any) -> bool:
    """Whether `cls` holds `value` as `name` already, so setting it again would change
    nothing — except on Python >= 3.13, where setting `__module__` deletes the class's
    `__firstlineno__` (put back at the end of its dict: the class then pickles otherwise and
    looks changed, and put back as absent it cannot be deleted)."""
    held = cls.__dict__.get(name, _ABSENT)
    return held is value or (name == "__module__" and held == value)


def _set_class_attribute(cls: type, name: str, value: Any) -> None:
    if _already_set(cls, name, value):
        return
    if value is _ABSENT:
        delattr(cls, name)
    else:
        setattr(cls, name, value)


@contextmanager
def classes_put_back() -> Iterator[None]:
    """Around a component's run: the classes its inputs brought get back, afterwards, the
    attributes they had before, so a class the notebook holds reads the notebook's globals
    again, not those of the last component that used it. An attribute the run itself
    changed (a monkeypatch) is left as the run left it."""
    replaced: list[tuple[type, str, Any, Any]] = []
    token = _replaced_in_classes.set(replaced)
    try:
        yield
    finally:
        _replaced_in_classes.reset(token)
        for cls, name, before, installed in reversed(replaced):
            if cls.__dict__.get(name, _ABSENT) is installed:
                _set_class_attribute(cls, name, before)


@contextmanager
def _classes_as_before() -> Iterator[None]:
    """Within `classes_put_back`: the classes loaded so far with the attributes they get back
    after the run, so that pickled now they pickle as they will then, if the run leaves
    them alone (the functions a load installs pickle otherwise than the notebook's own)."""
    replaced = _replaced_in_classes.get() or []
    for cls, name, before, _ in reversed(replaced):
        _set_class_attribute(cls, name, before)
    try:
        yield
    finally:
        for cls, name, _, installed in replaced:
            _set_class_attribute(cls, name, installed)


def _with_slots(args: tuple[Any, ...], attributes: dict[str, Any]) -> tuple[Any, ...]:
    """cloudpickle's arguments to make a class skeleton, with the `__slots__` of its
    `attributes` moved there: cloudpickle sets them once the class is made, too late to give
    it slots, and its instances had a `__dict__` instead. A `typing.NamedTuple` gets its
    (empty) slots from its own metaclass, which refuses them in the class body."""
    constructor, name, bases, type_kwargs, *more = args
    if any(base is NamedTuple for base in bases):
        return args
    return (constructor, name, bases, {**type_kwargs, "__slots__": attributes.pop("__slots__")}, *more)


def _code_reduced(code: types.CodeType) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """How code pickles: with the name of the file it was compiled from. A cell's file is
    named by the kernel process that compiled it (a temporary folder per pid): its code
    pickles with the cell's hash alone and loads into this process's file of that cell, so
    a breakpoint JupyterLab sets in the cell stops in it after a restart, in a value from
    another user's cache or from a remote task, and the same function pickles alike (same
    digest) in every process."""
    anywhere = code.replace(co_filename=_DYNAMIC_CODE)
    cell = CELL_FILE.search(code.co_filename)
    if cell is not None:
        return _code_in_cell, (anywhere, cell[2])
    return _code_in_file, (anywhere, code.co_filename)


class _Pickler(cloudpickle.Pickler):
    """cloudpickle, except that code keeps the name of the file it was compiled from, and
    functions defined in a notebook take their globals from where they are loaded.

    cloudpickle renames every function's file to `<dynamic-code>`; a function defined in a
    parent component would then fail in a child with no `Component NAME` label and no source
    lines in its traceback.
    """

    def __init__(self, *args: Any, top: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._top = top

    def reducer_override(self, obj: Any) -> Any:
        names = _pickling_names.get()
        if names is not None and obj is not self._top:
            reference = names.reference(obj)
            if reference is not None:
                return reference
        reducer = _REDUCERS.get(type(obj))
        if reducer is not None:
            return reducer(obj)
        if type(obj).__module__.startswith("pandas."):
            reduced = _without_pandas_cache(obj)
            if reduced is not None:
                return reduced
        if isinstance(obj, (set, frozenset)):  # not an exact one: pickle saves those itself
            reduced = _reduced_set_subclass(obj)
            if reduced is not None:
                return reduced
        if isinstance(obj, types.CodeType) and obj.co_filename != _DYNAMIC_CODE:
            return _code_reduced(obj)
        if isinstance(obj, functools._lru_cache_wrapper) and _defined_in_notebook(getattr(obj, "__wrapped__", None)):
            # pickle would look it up by name in `__main__`, which a component's namespace
            # is not; rebuilt around its function, it reads its globals as functions do
            attributes = {k: v for k, v in obj.__dict__.items() if k != "__wrapped__"}
            return _lru_cached, (obj.__wrapped__, obj.cache_parameters(), attributes)
        if (
            isinstance(obj, types.FunctionType)
            and obj.__code__ is _SINGLE_DISPATCH_CODE
            and _defined_in_notebook(getattr(obj, "__wrapped__", None))
        ):
            registry = {cls: f for cls, f in obj.registry.items() if cls is not object}
            attributes = {k: v for k, v in obj.__dict__.items() if k not in _SINGLE_DISPATCH_MADE}
            return _single_dispatched, (obj.__wrapped__, registry, attributes)
        reduced = super().reducer_override(obj)
        if reduced is not NotImplemented and _defined_in_notebook(obj):
            return _with_notebook_globals(reduced)
        if isinstance(obj, type) and isinstance(reduced, tuple) and len(reduced) == 6 and reduced[5] is _cloudpickle_class_setstate:
            make, args, (attributes, slots), *_ = reduced
            # copyreg caches `__slotnames__` in a class once an instance of it is pickled: a
            # cache, which would make the class look changed to the run after
            attributes = {k: v for k, v in attributes.items() if k != "__slotnames__"}
            if make is cloudpickle.cloudpickle._make_skeleton_class:
                make = _class_skeleton
                if "__slots__" in attributes:
                    args = _with_slots(args, attributes)
            return make, args, (attributes, slots), None, None, _class_setstate_noted
        return reduced


def reads_notebook_globals(blob: Blob) -> bool:
    """Whether the value holds functions defined in a notebook (see `_NotebookGlobals`),
    which read the globals of whatever namespace they are loaded into."""
    return _namespace_being_loaded.__name__.encode() in blob.stream


def pickled(value: Any, buffer_callback: Callable[[pickle.PickleBuffer], Any], name: str | None = None) -> bytes:
    """The pickle stream of `value` as blobs hold it; out-of-band buffers go to `buffer_callback`.
    Within `pickling_names`, `value` is that of `name` there, which may stand for the object
    another name holds."""
    _reducers_of_imported_libraries()
    names = _pickling_names.get()
    alias = None if names is None or name is None else names.alias(name, value)
    with io.BytesIO() as file:
        _Pickler(file, protocol=PROTOCOL, buffer_callback=buffer_callback, top=value).dump(value if alias is None else _Reduced(alias))
        return file.getvalue()


def referenced(buffer: pickle.PickleBuffer) -> bool:
    """Whether `buffer`, handed to a `pickled` buffer_callback within `pickling_names`, is
    another name's, pickled with a reference to it (see `_Names.referenced`)."""
    names = _pickling_names.get()
    return names is not None and names.referenced(buffer)


def _dump(name: str, value: Any) -> Blob:
    raw: list[pickle.PickleBuffer] = []
    try:
        stream = pickled(value, raw.append, name)
    except Exception as exc:  # pickling runs arbitrary __reduce__ code: anything may fail
        raise UnpicklableValue(name, value, exc) from exc
    buffers = tuple(b.raw() for b in raw)
    return Blob(stream, buffers, _digest(stream, buffers))


def dump(name: str, value: Any) -> Blob:
    """Pickle `value` (bound to `name`) with cloudpickle, protocol 5, buffers out of band;
    within `pickling_names`, as one of the names of that namespace."""
    names = _pickling_names.get()
    if names is not None and names.values.get(name) is value:
        return names.blob(name)
    return _dump(name, value)


# ---- one object under several names ----------------------------------------------------
#
# Each name's value is its own blob, so that unchanged values are never stored twice and a
# child's outputs are told apart by digest. Yet in one namespace a value can hold an object
# another name holds (`pipe` holds `scaler`; `b = a`), and a child fitting `scaler` must see
# `pipe` fitted (SPEC §3). So while a namespace is pickled, an object some other name holds
# pickles as a reference to that name: its name and its blob's digest, with the blob itself
# for a namespace that lacks the name or binds it to other content. Loaded together, such
# names are one object again. pickle lets a pickler see every object except exact lists,
# dicts, sets and bytearrays inside another value: those stay copies.

_UNSHARED = (type(None), bool, int, float, complex, str, bytes, range, tuple, frozenset, type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType)


class _Names:
    """The namespace being pickled: which name holds each object, and the blob of each name
    pickled so far. An object held by several names belongs to the first in sorted order,
    so the same namespace always pickles the same way."""

    def __init__(self, values: Mapping[str, Any], known: Callable[[str], Blob | None]) -> None:
        self.values = values
        self.owner = {id(values[n]): n for n in sorted(values, reverse=True) if not isinstance(values[n], _UNSHARED)}
        self.blobs: dict[str, Blob] = {}
        self.proven: set[str] = set()
        self._known = known
        self._pickling: set[str] = set()
        self._failed: dict[str, UnpicklableValue] = {}
        self._referenced: dict[int, pickle.PickleBuffer] = {}  # kept alive, so ids stay theirs

    def blob(self, name: str) -> Blob:
        """The blob of `name`: the one it was loaded from when `known` proves it unchanged,
        else pickled now (once)."""
        if name in self._failed:
            raise self._failed[name]
        blob = self.blobs.get(name)
        if blob is None:
            self._pickling.add(name)
            try:
                blob = self._known(name)
                if blob is not None:
                    self.proven.add(name)
                else:
                    blob = _dump(name, self.values[name])
            except UnpicklableValue as exc:
                self._failed[name] = exc
                raise
            finally:
                self._pickling.discard(name)
            self.blobs[name] = blob
        return blob

    def reference(self, obj: Any) -> tuple[Callable[..., Any], tuple[Any, ...]] | None:
        """How to pickle `obj` when another name holds it; None to pickle it as it is (no
        other name holds it, or that name is being pickled: a cycle)."""
        owner = self.owner.get(id(obj))
        if owner is None or owner in self._pickling:
            return None
        try:
            blob = self.blob(owner)
        except UnpicklableValue:
            return None
        # Read-only, whether the blob is a fresh pickle's (live memory) or the one a value was
        # loaded from (frozen): protocol 5 marks which, and the stream must not differ by it.
        buffers = [pickle.PickleBuffer(memoryview(b).toreadonly()) for b in blob.buffers]
        self._referenced.update((id(b), b) for b in buffers)
        return _shared, (owner, blob.digest, blob.stream, buffers)

    def alias(self, name: str, value: Any) -> tuple[Callable[..., Any], tuple[Any, ...]] | None:
        """How to pickle the whole value of `name` when it is the object another name holds
        (`b = a`); None to pickle it as it is."""
        return None if self.owner.get(id(value), name) == name else self.reference(value)

    def referenced(self, buffer: pickle.PickleBuffer) -> bool:
        """Whether `buffer` is one of another name's, pickled with a reference to it: its
        content is then the one the digest in that reference names."""
        return self._referenced.get(id(buffer)) is buffer


class _Reduced:
    """Pickles as the reduction it holds: the whole value of a name that holds the object
    another name holds (`b = a`)."""

    def __init__(self, reduced: tuple[Callable[..., Any], tuple[Any, ...]]) -> None:
        self._reduced = reduced

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return self._reduced


_pickling_names: ContextVar[_Names | None] = ContextVar("linkkernel_pickling_names", default=None)


@contextmanager
def pickling_names(values: Mapping[str, Any], known: Callable[[str], Blob | None] = lambda name: None) -> Iterator[_Names]:
    """Pickle the values of one namespace (a run's final one) as one, keeping which names
    hold the same object; `known(name)` is the blob a name was loaded from when it is
    provably unchanged (None: pickle it). Every name is pickled up front, in sorted order."""
    names = _Names(values, known)
    token = _pickling_names.set(names)
    try:
        for name in sorted(values):
            try:
                names.blob(name)
            except UnpicklableValue:
                pass  # found again, and reported, by whoever needs this name's blob
        yield names
    finally:
        _pickling_names.reset(token)


# Bytes in a stream of values that pickle otherwise once rebuilt, untouched (the same bytes
# inside other data only cost a needless re-pickle):
# - how a non-empty set (EMPTY_SET, MEMOIZE, MARK) or a frozenset (FROZENSET, MEMOIZE) starts
#   or ends: a set pickles in its iteration order, which hangs on its table's history, and
#   one rebuilt from a pickle usually iterates in another order (a set subclass holds an
#   exact set, see `_set_of`);
# - a class defined in a notebook, pickled by value: where one string object stands in
#   several places (a dataclass field's name in its methods' code, a slot's in `__slots__`)
#   the stream says so with a back reference, and a rebuilt class has copies there instead;
# - a matplotlib figure (each artist holds a CallbackRegistry): likewise, objects its
#   artists share come back as copies of their own.
_UNSETTLED_MARKS = (
    pickle.EMPTY_SET + pickle.MEMOIZE + pickle.MARK,
    pickle.FROZENSET + pickle.MEMOIZE,
    _class_setstate_noted.__name__.encode(),
    _callback_registry_again.__name__.encode(),
)


_CELL_PATH = re.compile(CELL_FILE.pattern.removesuffix("$").encode())


def _cell_path_in(blob: Blob) -> bool:
    """Whether the blob may hold code pickled with a kernel process's cell path (written
    before code pickled by cell hash): loaded, it pickles with the hash instead. Such a path
    in the user's own data only costs a needless re-pickle."""
    return _code_in_file.__name__.encode() in blob.stream and _CELL_PATH.search(blob.stream) is not None


def digests_as_loaded(values: Mapping[str, Any], blobs: Mapping[str, Blob]) -> dict[str, str]:
    """For the loaded `values` whose blob (in `blobs`, by name) holds a set or a notebook
    class, the digest they pickle to now, before the run touches them: what a run's final
    namespace is compared with (`changes`), so a set of strings or a dataclass the run only
    read is not taken for one it changed. Other names keep their blob's digest (no pickling
    pass for them); a value that no longer pickles is left out."""
    unsettled = {n for n, blob in blobs.items() if any(op in blob.stream for op in _UNSETTLED_MARKS) or _cell_path_in(blob)}
    if not unsettled:
        return {}
    with _classes_as_before(), pickling_names({n: values[n] for n in blobs}, lambda n: None if n in unsettled else blobs[n]) as names:
        return {n: names.blobs[n].digest for n in unsettled if n in names.blobs}


class _Group:
    """Names loaded together (a run's inputs, outputs published together): a reference to
    one of them with the same digest is that very object."""

    def __init__(self, digests: Mapping[str, str], load: Callable[[str], Any]) -> None:
        self.digests = digests
        self.values: dict[str, Any] = {}
        self.loading: set[str] = set()
        self._load = load

    def get(self, name: str) -> Any:
        if name not in self.values:
            self.loading.add(name)
            try:
                self.values[name] = self._load(name)
            finally:
                self.loading.discard(name)
        return self.values[name]


_loading_group: ContextVar[_Group | None] = ContextVar("linkkernel_loading_group", default=None)


@contextmanager
def loading_together(digests: Mapping[str, str], load: Callable[[str], Any]) -> Iterator[Callable[[str], Any]]:
    """Load the values named by `digests` as one namespace: `load(name)` loads one, and the
    function yielded returns a name's value, loading it (once) when no other one did."""
    group = _Group(digests, load)
    token = _loading_group.set(group)
    try:
        yield group.get
    finally:
        _loading_group.reset(token)


def _shared(name: str, digest: str, stream: bytes, buffers: list[Any]) -> Any:
    """An object another name held where it was pickled: that name's value when it is loaded
    alongside with the same content, else a copy of its own."""
    group = _loading_group.get()
    if group is not None and group.digests.get(name) == digest and name not in group.loading:
        return group.get(name)
    # a copy of its own, as writable as any loaded value (references' buffers come read-only)
    return loads(stream, [bytearray(b) for b in buffers], _namespace_being_loaded())


def loads(stream: bytes, buffers: Iterable[Any], namespace: dict[str, Any] | None = None) -> Any:
    """Unpickle a value that is to live in `namespace` (a new one when None), the globals of
    the functions in it that were defined in a notebook (see `_NotebookGlobals`)."""
    if namespace is None:
        namespace = _new_namespace()
    builtins_before = namespace.get("__builtins__", _ABSENT)
    token = _loading_into.set(namespace)
    try:
        return pickle.loads(stream, buffers=buffers)
    finally:
        _loading_into.reset(token)
        # cloudpickle sets `__builtins__` in every function's globals it rebuilds
        if builtins_before is _ABSENT:
            namespace.pop("__builtins__", None)
        else:
            namespace["__builtins__"] = builtins_before


def load(blob: Blob, namespace: dict[str, Any] | None = None) -> Any:
    """Rebuild a value from a blob as a fresh, writable copy, to live in `namespace` (a new
    one when None).

    Buffers are copied into bytearrays: arrays rebuilt from immutable bytes come back
    read-only, and a child must be free to mutate what it inherits without touching the blob.
    """
    return loads(blob.stream, [bytearray(b) for b in blob.buffers], namespace)


@dataclass(frozen=True)
class Changes:
    """What a run did to its namespace."""

    bound: tuple[str, ...]
    deleted: tuple[str, ...]


def changes(
    inputs: Mapping[str, Any],
    input_digests: Mapping[str, str | None],
    final: Mapping[str, Any],
    ignore: Iterable[str] = (),
) -> Changes:
    """Compare the namespace a run started with to the one it ended with.

    A name is an output when it is new, rebound to another object, or still bound to the
    same object whose content digest changed (mutated in place), or that no longer pickles.
    Values whose digest is unknown (unpicklable) count as unchanged while they keep their
    identity. Within `pickling_names`, the blob made to compare digests is the one the
    caller then stores.
    """
    skip = set(ignore)
    bound = []
    for name, value in final.items():
        if name in skip:
            continue
        if name not in inputs or inputs[name] is not value:
            bound.append(name)
            continue
        before = input_digests.get(name)
        if before is None:
            continue
        try:
            blob = dump(name, value)
        except UnpicklableValue:
            bound.append(name)  # it pickled before the run: changed in place (a lock attached, say)
            continue
        if blob.digest != before:
            bound.append(name)
    deleted = [name for name in inputs if name not in final and name not in skip]
    return Changes(tuple(bound), tuple(deleted))
