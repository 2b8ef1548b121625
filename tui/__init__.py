"""The console's user interface and the ``tosca`` command line.

The Textual application lives in :mod:`tui.app` (its one factory is :func:`tui.app.make_app`) with its screens
in
:mod:`tui.screens` and widgets in :mod:`tui.widgets`. This package's ``__init__`` imports nothing from
Textual, so ``tosca db`` and ``tosca user`` start without loading it.
"""
