"""Test images: built from a project, and checked before a run.

A docker or ssh host runs each shard in a container of the run's test image, so
an image without Python, with another pytest, or without the project's
dependencies fails every test in the same way.  :mod:`farm.images.check` (with
:mod:`farm.images.probe`, its engine side) finds that once, up front;
:mod:`farm.images.build` makes an image that cannot have those faults — the
user's interpreter minor, pytest and plugins at the user's versions, the
project's declared dependencies (:mod:`farm.images.requirements`) — on a base
from :mod:`farm.images.base`, named by :mod:`farm.images.recipe`.
"""
