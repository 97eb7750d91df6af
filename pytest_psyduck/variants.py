"""Building a test's variant items cheaply: once per test, not once per variant.

A variant is the item pytest's ``Function`` constructor would make from the
test's function with one more parametrization id.  That constructor looks the
function up again (and, for a method, makes a fresh instance of its class),
unpacks its marks and copies its attributes into the keywords — for every
variant, although all of them are the same for a test's whole family.  With
a hundred transformations that was most of collection's time.

:class:`Family` does that work once per test and then fills in each variant's
per-item state exactly as the constructor does: its own node id, name,
callspec, keywords, marks list, stash, fixture request and report lists, so
nothing one variant (or a plugin) writes to an item reaches another.  Only
plain ``pytest.Function`` items of a pytest with structured node ids are
built this way; anything else (a plugin's subclass, whose constructor may do
more) goes through ``from_parent`` as before.
"""

from __future__ import annotations

from typing import Any

import pytest
from _pytest.mark.structures import Mark, NodeKeywords, get_unpacked_marks
from _pytest.python import CallSpec, Class

try:
    from _pytest.nodeid import NodeId
except ImportError:  # pytest < 9: node ids are plain strings; use the constructor
    NodeId = None  # type: ignore[assignment,misc]


class Family:
    """What every variant of *item* shares, computed once; :meth:`variant` makes each."""

    def __init__(self, item: pytest.Function) -> None:
        self.item = item
        self.cheap = (
            NodeId is not None
            and type(item) is pytest.Function
            and isinstance(getattr(item, "_id", None), NodeId)
        )
        if not self.cheap:
            return
        callspec: CallSpec | None = getattr(item, "callspec", None)
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

    def variant(self, name: str, callspec: CallSpec) -> pytest.Function:
        """The item ``Function.from_parent`` would build for *name* and *callspec*."""
        item = self.item
        if not self.cheap:
            return type(item).from_parent(
                item.parent,
                name=name,
                callspec=callspec,
                fixtureinfo=item._fixtureinfo,
                keywords={callspec.id: True},
                originalname=item.originalname,
            )
        parent = item.parent
        assert parent is not None
        # Attributes are set in the constructor's order, which also gives the
        # item's __dict__ the constructor's layout.
        variant = object.__new__(pytest.Function)
        variant.name = name
        variant.parent = parent
        variant.config = item.config
        variant.session = item.session
        variant.path = item.path
        keywords = NodeKeywords(variant)
        keywords._markers.update(self.keywords)
        keywords._markers[callspec.id] = True
        variant.keywords = keywords
        variant.own_markers = list(self.marks)
        variant.extra_keyword_matches = set()
        variant._id = self.function_id.with_params(callspec.id if callspec._idlist else None)
        variant.stash = variant._store = pytest.Stash()
        variant._report_sections = []
        variant.user_properties = []
        variant.originalname = item.originalname
        if self.in_class:
            # Each item gets a fresh instance of its class, as from the constructor.
            variant._instance = parent.newinstance()
            variant._obj = getattr(variant._instance, item.originalname)
        else:
            variant._instance = None
            variant._obj = self.obj
        variant.callspec = callspec
        variant._fixtureinfo = item._fixtureinfo
        variant.fixturenames = item._fixtureinfo.names_closure
        variant._initrequest()
        return variant
