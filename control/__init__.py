"""The controller layer: the safety supervisor, the protocol engine, sessions, accounts and authorisation,
console settings, clocks and terminals, and the socket protocol the console speaks to the controller.

Import from the module that defines a name (``control.accounts``, ``control.settings``, ...): importing this
package loads nothing else, so a light module (``control.clock``, ``control.account_rules``) never pulls in
SQLAlchemy or pydantic. This package never imports the user interface (``tui``) nor ``textual``.
"""
