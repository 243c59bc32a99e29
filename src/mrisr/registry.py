"""One small registry of named objects, shared by every plug-in table of mrisr.

Architectures (:data:`mrisr.models.registry.ARCHITECTURES`) and presets, evaluation methods
(:data:`mrisr.evaluation.methods.METHODS`), metric protocols
(:mod:`mrisr.evaluation.metrics`) and degradations (:data:`mrisr.degradation.DEGRADATIONS`)
are each a :class:`Registry`::

    METHODS = Registry("method")

    @METHODS.register("cubic")
    def cubic(): ...

    METHODS.lookup("cubc")  # ConfigError: unknown method 'cubc' (known: cubic)

A registry is a read-only mapping (``name in r``, ``r[name]``, iteration in registration
order); only :meth:`Registry.register` adds entries. Registering a name again replaces the
entry (a plug-in may override a built-in). No dependency: this module imports only
:mod:`mrisr.errors`, so registries can be listed without torch.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, Optional, TypeVar, overload

from mrisr.errors import ConfigError

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Name -> object.

    Args:
        kind: what the entries are, for messages (``"method"`` gives ``unknown method 'x'``).
        error: the exception :meth:`lookup` raises on an unknown name.
        sort_known: list the known names sorted in that message (else in registration order).
    """

    def __init__(self, kind: str, error: type[Exception] = ConfigError,
                 sort_known: bool = True):
        self.kind = kind
        self.error = error
        self.sort_known = sort_known
        self._entries: dict[str, T] = {}

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, obj: T) -> T: ...

    def register(self, name: str, obj: Optional[T] = None):
        """``register(name, obj)`` adds ``obj``; ``@register(name)`` decorates a class or
        function and returns it unchanged."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} names are non-empty strings, got {name!r}")
        if obj is not None:
            self._entries[name] = obj
            return obj

        def decorate(target: T) -> T:
            self._entries[name] = target
            return target
        return decorate

    def known(self) -> str:
        """The registered names as the messages list them."""
        names = sorted(self._entries) if self.sort_known else list(self._entries)
        return ", ".join(names)

    def lookup(self, name) -> T:
        """The entry ``name``; :attr:`error` naming the known entries when there is none."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name from a config
            raise self.error(f"unknown {self.kind} '{name}' (known: {self.known()})") from None

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
