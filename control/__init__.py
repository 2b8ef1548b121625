"""The controller layer: the safety supervisor, the protocol engine, sessions, accounts and authorisation,
clocks and terminals, and the socket protocol the console speaks to the controller.

Two processes run this code. Where each module runs:

- **the controller process only** (``tosca controller``; it owns the rig): :mod:`control.controller` (the
  wiring, the device monitors, the treatment lifecycle, the socket commands, the snapshot),
  :mod:`control.supervisor` (the one place that decides whether the laser may emit), :mod:`control.engine`
  (the protocol engine), :mod:`control.recorder` (telemetry and the treatment and safety logs),
  :mod:`control.preview` (camera previews for the consoles), :mod:`control.authority` (who commands on which
  connection) and :mod:`control.ipc.server` (the sockets' server end);
- **a console only** (the TUI, or a script): :mod:`control.ipc.client` (the sockets' client end) and
  :mod:`control.ipc_errors` (what a client catches, importable before the socket protocol loads);
- **both**: :mod:`control.messages` (every message on the sockets), :mod:`control.vocabulary` (the states,
  severities, statuses and operator actions both sides name), and the record keeping both read and write
  through the database (accounts, subjects, sessions, protocols, calibrations, review).

Import from the module that defines a name (``control.accounts``, ``control.ipc.client``, ...): importing
this package loads nothing else, so a light module (``control.clock``, ``control.account_rules``) never pulls
in SQLAlchemy or pydantic. This package never imports the user interface (``tui``) nor ``textual``.
"""
