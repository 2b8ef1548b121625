"""Backups of the records database: list them, make one now, verify one, restore one.

The table lists every backup, newest first: when it was taken (local time, from its name), its size and
whether it verified (``yes``, ``no``, ``not checked``). Under it: how many days backups are kept (the
configuration's ``backup_retention_days``) and the free space of the data directory's file system.

Keys: ``b`` backs up now (a verified online copy; backups older than the retention are pruned), ``v`` verifies
the highlighted backup, ``r`` restores it after a confirmation. A restore is refused while a treatment
session is open (the controller's state over the console's link, and the records), and the current database
is backed up first. An admin may do all three; an engineer lists, backs up and verifies (a restore replaces
the records, which is an admin's decision). Every action, done or refused, is an audit row with the user's
name. The storage work
is in :mod:`storage.backups`, shared with ``tosca db backups``.

On the remote console (read-only records) the controller makes and verifies the backup for the person signed
in there (``remote_backup``, ``remote_verify_backup``: :mod:`control.controller.remote`), and audits it with
where the console is used from; the restore stays at the kiosk.

Open it with ``BackupsScreen(context, user)``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Label

from control.account_rules import UserInfo
from control.ipc_errors import CommandFailed, ControllerUnavailable
from storage.backups import (
    BackupEntry,
    BackupOverview,
    backup_overview,
    disk_space,
    human_size,
    make_backup,
    restore_live,
    verify_backup,
)
from storage.errors import StorageError, one_line
from storage.paths import DataDir
from tui.remote import RECORDS_WORK_TIMEOUT_S, is_remote, remote_refusal
from tui.safe_text import plain
from tui.screens._base import ScreenContext
from tui.screens.dialogs import ConfirmDialog
from tui.widgets.header import ConsoleHeader
from tui.widgets.tables import Cell, fill_table

#: The backup list's columns.
BACKUP_COLUMNS = ("Taken (local time)", "Size", "Verified", "File")


#: Who may list, make and verify backups (a restore is the admin's only).
BACKUP_ROLES = frozenset({"admin", "engineer"})


class BackupsScreen(Screen[None]):
    """The backups of the records database (an admin's and an engineer's screen; restore: admin only)."""

    DEFAULT_CSS = """
    BackupsScreen #backups {
        height: 1fr;
        padding: 0 1;
    }
    BackupsScreen #backup-table {
        height: 1fr;
        margin: 1 0 0 0;
        background: $surface;
    }
    BackupsScreen #facts {
        height: auto;
        color: $text-muted;
    }
    BackupsScreen #status {
        height: auto;
    }
    BackupsScreen #status.error {
        color: $error;
        text-style: bold;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("b", "backup_now", "Back up now"),
        Binding("v", "verify", "Verify"),
        Binding("r", "restore", "Restore"),
        Binding("escape", "back", "Back"),
    ]

    def __init__(
        self,
        context: ScreenContext,
        user: UserInfo,
        *,
        space: Callable[[Path], tuple[int, int]] = disk_space,
    ) -> None:
        """``space`` measures the data directory's file system (free and total bytes)."""
        super().__init__()
        self.context = context
        self.user = user
        self.space = space
        self.data_dir = DataDir(context.settings.data_dir)
        self.overview: BackupOverview | None = None
        #: True while a backup, verification or restore runs (the keys wait for it).
        self.busy = False

    def _terminal(self) -> str | None:
        terminal = getattr(self.app, "terminal", None)
        return terminal if isinstance(terminal, str) else self.context.settings.terminal

    def compose(self) -> ComposeResult:
        yield ConsoleHeader(
            "Backups", sim=self.context.settings.sim, user_text=f"{self.user.username} ({self.user.role})"
        )
        with Vertical(id="backups"):
            table: DataTable[str | Text] = DataTable(id="backup-table", cursor_type="row", zebra_stripes=True)
            table.add_columns(*BACKUP_COLUMNS)
            yield table
            yield Label("", id="facts")
            yield Label("", id="status")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#backup-table", DataTable).focus()
        if self.user.role not in BACKUP_ROLES:
            # Reached only from an admin's or engineer's menu; anyone else is told so and nothing is read.
            who = f"{self.user.username} is {self.user.role}"
            self.show_status(f"only an admin or an engineer may use this screen ({who})", error=True)
            return
        self.reload()

    # -- the list --------------------------------------------------------------------------------------------

    @work(exclusive=True, group="backups-load", exit_on_error=False)
    async def reload(self, select: str | None = None) -> None:
        """Read the backups again (``select`` names the backup to highlight afterwards)."""
        try:
            overview = await asyncio.to_thread(backup_overview, self.data_dir, space=self.space)
        except (StorageError, OSError) as exc:
            self.show_status(f"cannot list the backups: {one_line(exc)}", error=True)
            return
        self.show_overview(overview, select)

    def show_overview(self, overview: BackupOverview, select: str | None) -> None:
        table: DataTable[str | Text] = self.query_one("#backup-table", DataTable)
        keep = select or self.highlighted_name()
        cells: list[list[Cell]] = [
            [
                f"{entry.taken_at:%Y-%m-%d %H:%M:%S}",
                human_size(entry.size),
                plain(entry.verified_text, "bold red" if entry.verified is False else ""),
                plain(entry.name),
            ]
            for entry in overview.entries
        ]
        fill_table(table, BACKUP_COLUMNS, cells, keys=[entry.name for entry in overview.entries])
        names = [entry.name for entry in overview.entries]
        if keep in names:
            table.move_cursor(row=names.index(keep))
        self.overview = overview
        count = len(overview.entries)
        lines = [
            f"{count} backup{'s' if count != 1 else ''}; kept {overview.retention_days} days; "
            f"free space {human_size(overview.free_bytes)} of {human_size(overview.total_bytes)}"
        ]
        if overview.retention_problem is not None:
            lines.append(overview.retention_problem)
        if not overview.entries:
            lines.append("no backups yet; b makes the first")
        self.query_one("#facts", Label).update(plain("\n".join(lines), keep_newlines=True))
        self.refresh_bindings()

    def highlighted(self) -> BackupEntry | None:
        if self.overview is None or not self.overview.entries:
            return None
        row = self.query_one("#backup-table", DataTable).cursor_row
        entries = self.overview.entries
        return entries[row] if 0 <= row < len(entries) else None

    def highlighted_name(self) -> str | None:
        entry = self.highlighted()
        return entry.name if entry is not None else None

    @on(DataTable.RowHighlighted, "#backup-table")
    def row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if self.user.role not in BACKUP_ROLES and action != "back":
            return False
        if action == "restore" and self.user.role != "admin":
            return False
        if action in ("verify", "restore"):
            return self.highlighted() is not None or None
        return True

    def show_status(self, text: str, *, error: bool) -> None:
        label = self.query_one("#status", Label)
        label.update(plain(text))
        label.set_class(error, "error")

    # -- actions ---------------------------------------------------------------------------------------------

    @work(exclusive=True, group="backups-action", exit_on_error=False)
    async def action_backup_now(self) -> None:
        """Take a verified backup now."""
        refusal = remote_refusal(self.context, "backups.make")
        if refusal is not None:
            self.show_status(refusal, error=True)
            return
        if self.busy:
            return
        self.busy = True
        self.show_status("backing up…", error=False)
        try:
            if is_remote(self.context):
                name, size, note = await self.remote_backup()
            else:
                entry = await asyncio.to_thread(
                    make_backup, self.data_dir, user=self.user.username, terminal=self._terminal()
                )
                name, size, note = entry.name, entry.size, "integrity ok"
        except (StorageError, OSError, CommandFailed, ControllerUnavailable) as exc:
            self.show_status(f"backup failed: {one_line(exc)}", error=True)
            return
        finally:
            self.busy = False
        self.show_status(f"backed up to {name} ({human_size(size)}, {note})", error=False)
        self.reload(select=name)

    async def remote_backup(self) -> tuple[str, int, str]:
        """The controller makes the backup for the person signed in on the remote console's link."""
        from control.messages import RemoteBackup, RemoteBackupMade
        from tui.link import read_reply

        link = self.context.link
        if link is None:
            raise ControllerUnavailable("no link to the controller")
        made = read_reply(RemoteBackupMade, await link.call(RemoteBackup(), RECORDS_WORK_TIMEOUT_S))
        return made.name, made.size_bytes, "integrity ok" if made.verified else made.note

    async def remote_verify(self, name: str) -> tuple[bool, str]:
        """The controller verifies the backup ``name`` for the person signed in on the remote console."""
        from control.messages import RemoteBackupVerified, RemoteVerifyBackup
        from tui.link import read_reply

        link = self.context.link
        if link is None:
            raise ControllerUnavailable("no link to the controller")
        verdict = read_reply(
            RemoteBackupVerified, await link.call(RemoteVerifyBackup(name=name), RECORDS_WORK_TIMEOUT_S)
        )
        return verdict.ok, verdict.note

    @work(exclusive=True, group="backups-action", exit_on_error=False)
    async def action_verify(self) -> None:
        """Check the highlighted backup and show the verdict."""
        refusal = remote_refusal(self.context, "backups.verify")
        if refusal is not None:
            self.show_status(refusal, error=True)
            return
        entry = self.highlighted()
        if entry is None or self.busy:
            return
        self.busy = True
        self.show_status(f"verifying {entry.name}…", error=False)
        try:
            if is_remote(self.context):
                ok, note = await self.remote_verify(entry.name)
            else:
                ok, note = await asyncio.to_thread(
                    verify_backup,
                    self.data_dir,
                    entry.name,
                    user=self.user.username,
                    terminal=self._terminal(),
                )
        except (StorageError, OSError, CommandFailed, ControllerUnavailable) as exc:
            self.show_status(f"cannot verify {entry.name}: {one_line(exc)}", error=True)
            return
        finally:
            self.busy = False
        if ok:
            self.show_status(f"{entry.name} verified: {note}", error=False)
        else:
            self.show_status(f"{entry.name} does NOT verify: {note}", error=True)
        self.reload(select=entry.name)

    def controller_session(self) -> str | None:
        """Why the controller says a session is open (its newest snapshot over the link), or None."""
        link = self.context.link
        snapshot = link.snapshot if link is not None else None
        if snapshot is None or snapshot.session is None:
            return None
        view = snapshot.session
        return f"session {view.session_id} for {view.subject_code} is {view.status} on the rig"

    def action_restore(self) -> None:
        """Ask, then restore the highlighted backup (refused while a session is open; an admin's only)."""
        refusal = remote_refusal(self.context, "backups.restore")
        if refusal is not None:
            self.show_status(refusal, error=True)
            return
        entry = self.highlighted()
        if entry is None or self.busy or self.user.role != "admin":
            return
        reason = self.controller_session()
        if reason is not None:
            self.refuse_restore(entry.name, reason)
            return
        question = (
            f"Restore {entry.name} (taken {entry.taken_at:%Y-%m-%d %H:%M:%S})? The records now in the "
            "database are backed up first, then replaced by this backup's."
        )

        def answered(yes: bool | None) -> None:
            if yes:
                self.restore(entry.name)
            else:
                self.show_status("restore cancelled; nothing changed", error=False)

        self.app.push_screen(ConfirmDialog(question), callback=answered)

    @work(exclusive=True, group="backups-action", exit_on_error=False)
    async def refuse_restore(self, name: str, reason: str) -> None:
        """Record and show a restore refused because the controller has a session open."""
        text = f"restore refused while a session is open ({reason}); end the session first"
        self.show_status(text, error=True)
        from storage.audit_query import record_action

        try:
            await asyncio.to_thread(
                record_action,
                self.data_dir.db_path,
                "db_restore",
                "failure",
                user=self.user.username,
                terminal=self._terminal(),
                details={"backup": name, "reason": text},
            )
        except StorageError as exc:
            self.show_status(f"{text} (not recorded: {one_line(exc)})", error=True)

    @work(exclusive=True, group="backups-action", exit_on_error=False)
    async def restore(self, name: str) -> None:
        """Restore ``name`` into the running database."""
        self.busy = True
        self.show_status(f"restoring {name}…", error=False)
        try:
            result = await asyncio.to_thread(
                restore_live,
                self.data_dir,
                name,
                user=self.user.username,
                terminal=self._terminal(),
                session_open=self.controller_session,
            )
        except (StorageError, OSError) as exc:
            self.show_status(one_line(exc), error=True)
            return
        finally:
            self.busy = False
        self.show_status(
            f"restored {name} (schema {result.revision}); the records it replaced are in "
            f"{result.replaced_backup.name}",
            error=False,
        )
        self.reload(select=name)

    def action_back(self) -> None:
        self.dismiss(None)
