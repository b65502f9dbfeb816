"""Named variants through one registry type, as timm does (``register_model``, ``create_model``).

Decoders, face detectors, runtimes, backbones, precisions, ... are each a
:class:`Registry`: entries (frozen dataclass specs, or factories registered
with a description) in registration order, looked up by name. An unknown name
raises the registry's own :class:`~dfscan.core.errors.UnknownName` subclass,
whose message lists the known names::

    RUNTIMES = Registry("runtime", UnknownRuntime, extra_names=("auto",), factory=lambda spec: spec.load,
                        entries=(RuntimeSpec("onnxruntime", ...), ...))
    RUNTIMES.register(RuntimeSpec("torch", ...))              # a spec: registered under spec.name

    BLURS = Registry("blur")

    @BLURS.register(description="box blur, radius 1")        # a factory: registered under its name
    def box(image): ...

    BLURS.create("box", image)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

from dfscan.core.errors import UnknownName

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

# The default message; a registry may give its own with the same fields.
MESSAGE = "unknown {kind} {name!r}; known {plural}: {known}"


@dataclass(frozen=True)
class Factory:
    """A registered function and its description (what :meth:`Registry.register` keeps for a bare factory)."""

    name: str
    description: str
    create: Callable[..., Any]


def _default_factory(entry: Any) -> Callable[..., Any]:
    """What :meth:`Registry.create` calls: the entry itself if callable, else its ``create``."""
    if callable(entry):
        return entry
    create = getattr(entry, "create", None)
    if not callable(create):
        raise TypeError(f"{entry!r} is not callable and has no create(); pass factory= to the Registry")
    return create


class Registry(Generic[T]):
    """Named entries of one kind, in registration order.

    ``kind`` names the kind in messages ("runtime"), ``plural`` its plural
    (default ``kind + "s"``). ``error`` is the :class:`UnknownName` subclass raised
    for an unknown name. ``extra_names`` are names the caller handles itself
    (``auto``): listed first among the known names, never entries. ``hints`` adds
    a sentence to the message for a name that is known elsewhere. ``factory``
    maps an entry to what :meth:`create` calls. ``entries`` (specs with a ``name``, or a
    mapping of names to entries) are registered at once.
    """

    def __init__(
        self,
        kind: str,
        error: type[UnknownName] = UnknownName,
        *,
        plural: str | None = None,
        extra_names: tuple[str, ...] = (),
        hints: Mapping[str, str] | None = None,
        message: str = MESSAGE,
        factory: Callable[[T], Callable[..., Any]] = _default_factory,
        entries: Iterable[T] | Mapping[str, T] = (),
    ) -> None:
        if not (isinstance(error, type) and issubclass(error, UnknownName)):
            raise TypeError(f"a registry's error must be a subclass of UnknownName, not {error!r}")
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self.error = error
        self.extra_names = tuple(extra_names)
        self.hints = dict(hints or {})
        self.message = message
        self._factory = factory
        self._entries: dict[str, T] = {}
        if isinstance(entries, Mapping):
            for name, entry in entries.items():
                self.register(name, entry)
        else:
            for entry in entries:
                self.register(entry)

    # -- registering ------------------------------------------------------------------

    @overload
    def register(self, entry: T, /) -> T: ...
    @overload
    def register(self, name: str, entry: T, /) -> T: ...
    @overload
    def register(self, name: str | None = None, /, *, description: str = "") -> Callable[[F], F]: ...

    def register(self, *args: Any, description: str = "") -> Any:
        """Register an entry; as a call or as a decorator.

        * ``register(spec)``: ``spec`` under ``spec.name``;
        * ``register(name, entry)``: ``entry`` under ``name``;
        * ``@register()`` / ``@register(name, description=...)``: the decorated function as a
          :class:`Factory` under ``name`` (default: the function's name); the function is returned as it was.
        """
        if len(args) == 2:
            name, entry = args
            return self._add(name, entry)
        if len(args) == 1 and not isinstance(args[0], str):
            entry = args[0]
            name = getattr(entry, "name", None)
            if not isinstance(name, str):
                raise TypeError(f"{entry!r} has no name; use register(name, entry)")
            return self._add(name, entry)
        if len(args) > 2:
            raise TypeError(f"register() takes at most 2 positional arguments ({len(args)} given)")
        given = args[0] if args else None

        def decorate(func: F) -> F:
            name = given or func.__name__
            doc = description or (func.__doc__ or "").strip().split("\n", 1)[0]
            self._add(name, Factory(name, doc, func))  # type: ignore[arg-type]
            return func

        return decorate

    def _add(self, name: str, entry: T) -> T:
        if not isinstance(name, str) or not name:
            raise TypeError(f"a {self.kind} needs a non-empty string name, not {name!r}")
        if name in self._entries or name in self.extra_names:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    # -- looking up -------------------------------------------------------------------

    def get(self, name: str) -> T:
        """The entry called ``name``; an unknown name raises the registry's error, listing the known ones."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):  # TypeError: an unhashable "name"
            raise self.unknown(name) from None

    __getitem__ = get

    def unknown(self, name: Any) -> UnknownName:
        """The error for ``name``, not raised: for a caller that handles names of its own (``auto``) first."""
        known = ", ".join([*self.extra_names, *self._entries])
        text = self.message.format(kind=self.kind, plural=self.plural, name=name, known=known)
        hint = self.hints.get(name) if isinstance(name, str) else None
        return self.error(f"{text}; {hint}" if hint else text)

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the factory of the entry ``name`` with ``args`` and ``kwargs`` (timm's ``create_model``)."""
        return self._factory(self.get(name))(*args, **kwargs)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def description(self, name: str) -> str:
        return str(getattr(self.get(name), "description", ""))

    # -- the read-only mapping the tables were before ---------------------------------

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._entries
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> tuple[str, ...]:
        return self.names()

    def values(self) -> tuple[T, ...]:
        return tuple(self._entries.values())

    def items(self) -> tuple[tuple[str, T], ...]:
        return tuple(self._entries.items())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
