"""The terminal recorded in audit rows: SSH client address, tty name, or no-tty."""

from __future__ import annotations

import os

from control.terminal import NO_TTY, detect_terminal, is_ssh_session, may_draw_graphics, ssh_client_address


def test_ssh_connection_names_the_client_address() -> None:
    env = {"SSH_CONNECTION": "198.51.100.23 52144 10.0.0.5 22"}
    assert detect_terminal(env) == "ssh:198.51.100.23"
    assert is_ssh_session(env)


def test_ssh_client_is_used_when_ssh_connection_is_absent() -> None:
    env = {"SSH_CLIENT": "2001:db8::7 40022 22"}
    assert detect_terminal(env) == "ssh:2001:db8::7"


def test_ssh_connection_wins_over_ssh_client() -> None:
    env = {"SSH_CONNECTION": "192.0.2.1 1 192.0.2.2 22", "SSH_CLIENT": "192.0.2.99 1 22"}
    assert ssh_client_address(env) == "192.0.2.1"


def test_blank_ssh_variables_are_ignored() -> None:
    assert ssh_client_address({"SSH_CONNECTION": "  ", "SSH_CLIENT": ""}) is None
    assert not is_ssh_session({})


def test_tty_name_of_stdin_when_not_under_ssh() -> None:
    primary, secondary = os.openpty()
    try:
        assert detect_terminal({}, stdin_fd=secondary) == os.ttyname(secondary)
        assert detect_terminal({}, stdin_fd=secondary).startswith("/dev/pts/")
    finally:
        os.close(secondary)
        os.close(primary)


def test_no_tty_for_a_pipe_or_no_descriptor() -> None:
    read_end, write_end = os.pipe()
    try:
        assert detect_terminal({}, stdin_fd=read_end) == NO_TTY
    finally:
        os.close(read_end)
        os.close(write_end)
    assert detect_terminal({}, stdin_fd=None) == NO_TTY


def test_only_terminals_that_may_draw_graphics_are_asked_about_them() -> None:
    assert may_draw_graphics({"TERM": "xterm-kitty"})
    assert may_draw_graphics({"TERM": "foot"})
    assert may_draw_graphics({"TERM": "xterm-256color", "TERM_PROGRAM": "WezTerm"})
    assert may_draw_graphics({"TERM": "xterm-256color", "XTERM_VERSION": "XTerm(390)"})
    # An ordinary terminal, tmux, screen and the Linux console are not asked (each question costs the start
    # up to 0.1 s where no answer comes), unless the variable says to.
    assert not may_draw_graphics({"TERM": "xterm-256color"})
    assert not may_draw_graphics({"TERM": "tmux-256color", "TERM_PROGRAM": "tmux"})
    assert not may_draw_graphics({"TERM": "xterm-kitty", "TMUX": "/tmp/tmux-0/default,1,0"})
    assert not may_draw_graphics({"TERM": "linux"})
    assert not may_draw_graphics({})
    assert may_draw_graphics({"TERM": "xterm-256color", "TOSCA_PROBE_GRAPHICS": "1"})
    assert not may_draw_graphics({"TERM": "xterm-256color", "TOSCA_PROBE_GRAPHICS": "0"})
