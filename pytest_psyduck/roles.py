"""The names psyduck's plugins are registered under, which tell the processes apart.

A worker sees the user's ``--psyduck`` too, so the early hooks decide which
process they are in by the plugins registered.  The names live here rather than
with the plugins so that asking costs no import of the worker's machinery.
"""

#: The worker side (:class:`~pytest_psyduck.worker.WorkerPlugin`), in a worker only.
WORKER_PLUGIN_NAME = "psyduck-worker"
#: The controller's run loop and its replay, in the user's process during ``--psyduck``.
SESSION_PLUGIN_NAME = "psyduck-session"
REPLAY_PLUGIN_NAME = "psyduck-replay"
#: What a worker forked from the user's process must unregister.
CONTROLLER_PLUGINS = (SESSION_PLUGIN_NAME, REPLAY_PLUGIN_NAME)
#: The transformation hooks, registered in every process.
TRANSFORMATIONS_PLUGIN_NAME = "psyduck-transformations"
#: The matrix summary, in the user's process only.
MATRIX_PLUGIN_NAME = "psyduck-matrix"
#: A fresh worker's stand-in for the junitxml state (:mod:`pytest_psyduck.workerjunit`).
WORKER_JUNIT_PLUGIN_NAME = "psyduck-worker-junit"
#: Where pytest-benchmark and syrupy give up under xdist (:mod:`pytest_psyduck.pluginbridges`),
#: in the user's process; its workers' half is registered by :mod:`workermain`.
CONTROLLER_BRIDGES_PLUGIN_NAME = "psyduck-controller-bridges"
