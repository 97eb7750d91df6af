"""Variant items that cost a few hundred bytes until something looks at them.

A variant is the item pytest's ``Function`` constructor would make from the
test's function with one more parametrization id.  That constructor looks the
function up again (and, for a method, makes a fresh instance of its class),
unpacks its marks, copies its attributes into the keywords and builds a
fixture request — for every variant, although all of it is the same for a
test's whole family, and most of it is never used by the user's process of a
farm run, which only sends node ids and replays reports.  A million variants
built that way held ~1.9 GB there.

:class:`Family` does the shared work once per test.  Each variant it makes is
a :class:`Function` that holds only its parent, its node id and what tells it
apart from its siblings; everything else the constructor sets — name,
keywords, marks list, stash, fixture request, report lists, callspec, class
instance — is made on first access, as the constructor would have made it,
and then kept, so nothing one variant (or a plugin) writes to an item reaches
another.  What pytest itself reads of every item (the callspec, when it orders
tests by fixture; the marks and name) is kept in slots, so most variants never
have a ``__dict__``.  :meth:`Function.shed` forgets again what still equals
what would be made anew; the replay sheds each variant once its result is
logged, and selection once ``-k``/``-m`` have matched.  Only plain
``pytest.Function`` items of a pytest with structured node ids are built this
way; anything else (a plugin's subclass, whose constructor may do more) goes
through ``from_parent``, with its variant in the stash under :data:`VARIANT_KEY`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pytest
from _pytest.mark.structures import Mark, NodeKeywords, get_unpacked_marks
from _pytest.python import CallSpec, Class

try:
    from _pytest.nodeid import NodeId
except ImportError:  # pytest < 9: node ids are plain strings; use the constructor
    NodeId = None  # type: ignore[assignment,misc]


@dataclass(frozen=True, slots=True)
class Variant:
    """What an item runs under (a ``Transformation``), and the node id of the test as written."""

    transformation: Any
    base_nodeid: str


VARIANT_KEY = pytest.StashKey[Variant]()


#: Callspecs of unparametrized tests' variants, by the variant's id (its transformation's name).
_UNPARAMETRIZED: dict[str, CallSpec] = {}
_NO_PARAMETERS = CallSpec()


class Family:
    """What every variant of *item* shares, computed once; :meth:`variant` makes each."""

    def __init__(self, item: pytest.Function) -> None:
        self.item = item
        self.cheap = (
            NodeId is not None
            and type(item) is pytest.Function
            and isinstance(getattr(item, "_id", None), NodeId)
        )
        callspec: CallSpec | None = getattr(item, "callspec", None)
        #: The test's own parametrization ids, which each variant's id extends.
        self.ids: tuple[str, ...] = tuple(callspec._idlist) if callspec is not None else ()
        # Variants of a parametrized test share its callspec's parameters, as
        # each parametrized item shares its own; those of a plain test share
        # one empty set of them.
        self.callspec = callspec or _NO_PARAMETERS
        if not self.cheap:
            return
        self.in_class = isinstance(item.parent, Class)
        # Looked up as the constructor looks it up (the test may have been made from
        # another callable); a method is looked up again on each variant's instance.
        obj = item.obj if self.in_class else item._getobj()
        self.obj = obj
        #: The marks the constructor gives every variant (the callspec's marks are the test's).
        self.marks: list[Mark] = [*get_unpacked_marks(obj), *(callspec.marks if callspec else ())]
        #: Keywords after the variant's own name, in the constructor's order of precedence.
        self.keywords: dict[str, Any] = {mark.name: mark for mark in self.marks}
        self.keywords.update(obj.__dict__)
        #: The node id of the test function, which each variant parametrizes.
        self.function_id = item.parent.id.child(item.originalname)
        self._keyword_names: dict[str, str] | None = None
        #: Whether a variant's own list of marks was made (and may differ from ``marks``).
        self.own_marks = False

    def variant(
        self, token: str, transformation: Any, properties: tuple[tuple[str, object], ...]
    ) -> pytest.Function:
        """The item ``Function.from_parent`` would build for the test's ids plus *token*.

        *properties* are the variant's ``user_properties``; *transformation* is
        what :func:`variant_of` gives for it.
        """
        item = self.item
        ids = (*self.ids, token)
        if not self.cheap:
            callspec = replace(self.callspec, _idlist=ids)
            built = type(item).from_parent(
                item.parent,
                name=f"{item.originalname}[{'-'.join(ids)}]",
                callspec=callspec,
                fixtureinfo=item._fixtureinfo,
                keywords={callspec.id: True},
                originalname=item.originalname,
            )
            built.stash[VARIANT_KEY] = Variant(transformation, item.nodeid)
            built.user_properties.extend(properties)
            return built
        variant = object.__new__(Function)
        # Slots, which every item has room for whether they are set or not.
        variant.parent = item.parent
        variant.config = item.config
        variant.session = item.session
        variant.path = item.path
        variant._id = self.function_id.with_params("-".join(ids))
        variant._family = self
        variant._token = token
        variant._transformation = transformation
        variant._properties = properties
        variant._made = ()
        return variant

    def callspec_of(self, token: str) -> CallSpec:
        """A variant's callspec; variants of unparametrized tests share one per token
        (it is frozen, and has no parameters to tell them apart)."""
        if self.ids:
            return replace(self.callspec, _idlist=(*self.ids, token))
        callspec = _UNPARAMETRIZED.get(token)
        if callspec is None:
            callspec = _UNPARAMETRIZED[token] = CallSpec(_idlist=(token,))
        return callspec

    def keyword_names(self) -> Mapping[str, str]:
        """Every keyword name of the test's items, each as one shared string."""
        if self._keyword_names is None:
            self._keyword_names = {name: name for name in self.item.keywords}
        return self._keyword_names


def _name(item: Function) -> str:
    family = item._family
    return f"{family.item.originalname}[{'-'.join((*family.ids, item._token))}]"


def _stash(item: Function) -> pytest.Stash:
    stash = item.stash = item._store = pytest.Stash()
    stash[VARIANT_KEY] = Variant(item._transformation, item._family.item.nodeid)
    return stash


def _keyword_markers(item: Function) -> dict[str, Any]:
    """What a variant's keywords hold of its own when made (without making its name)."""
    markers: dict[str, Any] = {_name(item): True}
    markers.update(item._family.keywords)
    markers["-".join((*item._family.ids, item._token))] = True
    return markers


def _keywords(item: Function) -> NodeKeywords:
    keywords = NodeKeywords(item)
    keywords._markers.update(item._family.keywords)
    keywords._markers["-".join((*item._family.ids, item._token))] = True
    return keywords


def _bound(item: Function, name: str) -> Any:
    """``_instance`` and ``_obj``: each item gets a fresh instance of its class, as from the
    constructor, and the test looked up on it; a function is the family's."""
    family = item._family
    if family.in_class:
        item._instance = item.parent.newinstance()
        item._obj = getattr(item._instance, family.item.originalname)
    else:
        item._instance = None
        item._obj = family.obj
    return getattr(item, name)


def _own_markers(item: Function) -> list[Mark]:
    item._family.own_marks = True
    return list(item._family.marks)


def _request(item: Function, name: str) -> Any:
    pytest.Function._initrequest(item)
    return getattr(item, name)


#: How each attribute the constructor sets is made, on first access.
_LAZY: dict[str, Callable[[Function], Any]] = {
    "name": _name,
    "keywords": _keywords,
    "own_markers": _own_markers,
    "extra_keyword_matches": lambda item: set(),
    "stash": _stash,
    "_store": _stash,
    "_report_sections": lambda item: [],
    "user_properties": lambda item: list(item._properties),
    "originalname": lambda item: item._family.item.originalname,
    "_instance": lambda item: _bound(item, "_instance"),
    "_obj": lambda item: _bound(item, "_obj"),
    "callspec": lambda item: item._family.callspec_of(item._token),
    "_fixtureinfo": lambda item: item._family.item._fixtureinfo,
    "fixturenames": lambda item: item._family.item._fixtureinfo.names_closure,
    "funcargs": lambda item: _request(item, "funcargs"),
    "_request": lambda item: _request(item, "_request"),
}


#: Attributes made (and forgotten) together.
_MADE_TOGETHER = {
    "stash": ("stash", "_store"),
    "_store": ("stash", "_store"),
    "_instance": ("_instance", "_obj"),
    "_obj": ("_instance", "_obj"),
}


def _unbound(item: Function) -> bool:
    """Whether the test's class instance (if any) is as fresh as a new one: nothing set on it."""
    return item._instance is None or getattr(item._instance, "__dict__", None) == {}


def _same_marks(item: Function, marks: list[Mark]) -> bool:
    family = item._family.marks
    return len(marks) == len(family) and all(a is b for a, b in zip(marks, family, strict=True))


#: The made attributes :meth:`Function.shed` may forget, each with its test of being as made.
_UNCHANGED: dict[str, Callable[[Function, Any], bool]] = {
    "name": lambda item, value: value == _name(item),
    "callspec": lambda item, value: value == item._family.callspec_of(item._token),
    "own_markers": _same_marks,
    "keywords": lambda item, value: value._markers == _keyword_markers(item),
    "extra_keyword_matches": lambda item, value: not value,
    "_report_sections": lambda item, value: not value,
    "user_properties": lambda item, value: tuple(value) == item._properties,
    "stash": lambda item, value: len(value) == 1 and VARIANT_KEY in value,
    "_instance": lambda item, value: _unbound(item),
    "_obj": lambda item, value: _unbound(item),
    "_store": lambda item, value: len(value) == 1 and VARIANT_KEY in value,
}


_MADE_LISTS: dict[tuple[str, ...], tuple[str, ...]] = {}


class _Made:
    """An attribute of a variant made on first access and then kept in the item's ``__dict__``,
    where it hides this descriptor (as ``functools.cached_property`` does), so that reading
    it again, and looking up any attribute the item lacks, costs what it costs on any item."""

    __slots__ = ("make", "name")

    def __init__(self, name: str, make: Callable[[Function], Any]) -> None:
        self.name = name
        self.make = make

    def __get__(self, item: Function | None, owner: type | None = None) -> Any:
        if item is None:
            return self
        value = self.make(item)
        setattr(item, self.name, value)
        made = (*item._made, self.name)
        # Variants mostly make the same few attributes: one tuple for each such list.
        item._made = _MADE_LISTS.setdefault(made, made)
        return value


class _Kept(_Made):
    """An attribute nearly every variant has made by the end of collection or of its report
    (pytest's fixture ordering reads each callspec, pytest-timeout each test's marks), kept
    in a slot of the item's own: an item that has a ``__dict__`` at all pays ~250 bytes."""

    __slots__ = ("slot",)

    def __init__(self, name: str, make: Callable[[Function], Any], slot: Any) -> None:
        super().__init__(name, make)
        self.slot = slot

    def __get__(self, item: Function | None, owner: type | None = None) -> Any:
        if item is None:
            return self
        try:
            return self.slot.__get__(item, owner)
        except AttributeError:
            return super().__get__(item, owner)

    def __set__(self, item: Function, value: Any) -> None:
        self.slot.__set__(item, value)

    def __delete__(self, item: Function) -> None:
        self.slot.__delete__(item)


def _made_on_first_use(cls: type[Function]) -> type[Function]:
    slots = {"name": pytest.Function.name, "callspec": cls._callspec, "own_markers": cls._marks}
    for name, make in _LAZY.items():
        slot = slots.get(name)
        setattr(cls, name, _Made(name, make) if slot is None else _Kept(name, make, slot))
    return cls


@_made_on_first_use
class Function(pytest.Function):
    """A variant made by :class:`Family`: a ``pytest.Function`` whose state comes on first use.

    Named as pytest's class, so that ``--collect-only`` and every other
    place that shows an item's class reads as for the constructor's item.
    """

    __slots__ = (
        "_callspec",
        "_family",
        "_made",
        "_marks",
        "_properties",
        "_token",
        "_transformation",
    )

    _family: Family
    _token: str
    _transformation: Any
    _properties: tuple[tuple[str, object], ...]
    #: The attributes made on first use so far, in that order.
    _made: tuple[str, ...]

    def shed(self) -> None:
        """Forget what was made on first use and still equals what would be made again.

        Called once a variant's result is logged: a plugin that read its marks
        or its stash while it was reported (pytest-timeout reads the marks of
        every test) leaves nothing behind.  What was changed stays.
        """
        kept = []
        for name in self._made:
            unchanged = _UNCHANGED.get(name)
            if unchanged is not None and unchanged(self, getattr(self, name)):
                for made in _MADE_TOGETHER.get(name, (name,)):
                    delattr(self, made)
            else:
                kept.append(name)
        made = tuple(kept)
        self._made = _MADE_LISTS.setdefault(made, made)


def variant_of(item: pytest.Item) -> Variant | None:
    """The variant *item* is, or None for a test as written (and for anything else)."""
    if type(item) is Function:
        return Variant(item._transformation, item._family.item.nodeid)
    return item.stash.get(VARIANT_KEY, None)


def transformation_of(item: pytest.Item) -> Any:
    """The transformation of a variant, or None for a test as written."""
    if type(item) is Function:
        return item._transformation
    variant = item.stash.get(VARIANT_KEY, None)
    return None if variant is None else variant.transformation


def own_markers_of(item: pytest.Item) -> Sequence[Mark]:
    """``item.own_markers``, without making a variant's list: its family's marks until
    one of the family's variants has a list of its own (a plugin added a mark to it)."""
    if type(item) is Function and not item._family.own_marks:
        return item._family.marks
    return item.own_markers


def keyword_names_of(item: pytest.Item) -> Mapping[str, str]:
    """Names of *item*'s keywords, each mapped to itself, without making a variant's keywords.

    For a variant, its family's names: its own name and parametrization id are left
    out, and so is any keyword a plugin gave it alone.
    """
    if type(item) is Function:
        return item._family.keyword_names()
    return {name: name for name in item.keywords}


def user_properties_of(item: pytest.Item) -> Sequence[tuple[str, object]]:
    """The properties *item* was collected with, without making a variant's list: its
    transformation's shared tuple (a plugin may have added to the list since)."""
    if type(item) is Function:
        return item._properties
    return item.user_properties
