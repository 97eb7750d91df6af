"""Test images: built from a project (:mod:`farm.images.build`), and checked before a run.

A docker or ssh host runs each shard in a container of the run's test image, so
an image without Python, with another pytest, or without the project's
dependencies fails every test in the same way.  :mod:`farm.images.check` finds
that once, up front, and :mod:`farm.images.build` makes an image that cannot
have those faults: the user's interpreter minor, pytest and plugins at the
user's versions, and the project's declared dependencies.
"""
