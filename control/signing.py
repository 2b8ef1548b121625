"""Electronic signatures of finished sessions (21 CFR Part 11): a person signs with their password and a
meaning; notes added after a signature are a signed addendum.

:func:`sign_session` checks the password through :meth:`control.accounts.AccountService.login` (context
``session_signature``: audited, and a wrong password counts towards the account's lockout like any other).
A wrong password, an inactive or locked account, an unknown meaning, "performed by" from anyone but the
technician who ran the session, or a session that is still open or already signed with that meaning by that
person, is refused with :class:`SignatureRefused`, audited as a
``session_sign`` failure, and nothing is signed. A signature is one chained ``session_records`` row
(:mod:`storage.signatures`) and one ``session_sign`` audit row, in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from sqlalchemy import select

from control.sessions import MAX_NOTES_LENGTH
from storage import AuditRepository
from storage.chain import on_session
from storage.models import TreatmentSession as SessionRow
from storage.signatures import (
    MEANINGS,
    PERFORMED_BY,
    SessionSignature,
    SignatureError,
    append_signature,
    signatures_of,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from control.accounts import AccountService

#: ``audit_log.action`` of a signature (or a refused one) and of a signed addendum.
ACTION_SESSION_SIGN: Final = "session_sign"
ACTION_SESSION_ADDENDUM: Final = "session_addendum"


class SignatureRefused(Exception):
    """Nothing was signed; the message is one line a person can act on."""


@dataclass(frozen=True, slots=True)
class Signed:
    """A signature just written: the row's id and what it says."""

    record_id: int
    session_id: int
    printed_name: str
    meaning: str


async def _refuse(
    accounts: AccountService,
    action: str,
    session_id: int,
    username: str,
    why: str,
    meaning: str,
) -> SignatureRefused:
    async with accounts.sessions() as session, session.begin():
        await AuditRepository(session).add(
            action,
            "failure",
            username=username or None,
            entity_type="session",
            entity_id=session_id,
            terminal=accounts.terminal,
            details={"meaning": meaning, "reason": why},
            timestamp=accounts.clock(),
        )
    return SignatureRefused(why)


async def sign_session(
    accounts: AccountService,
    session_id: int,
    username: str,
    password: str,
    meaning: str,
    *,
    addendum: str | None = None,
) -> Signed:
    """Sign the finished session ``session_id`` as ``username`` (password checked) with ``meaning``; with
    ``addendum``, sign those notes as an addendum to the record. :class:`SignatureRefused` (audited, nothing
    signed) for any refusal."""
    action = ACTION_SESSION_ADDENDUM if addendum is not None else ACTION_SESSION_SIGN
    if meaning not in MEANINGS:
        raise await _refuse(
            accounts,
            action,
            session_id,
            username,
            f"the meaning must be one of {', '.join(MEANINGS)}",
            meaning,
        )
    if addendum is not None:
        if not addendum.strip():
            raise SignatureRefused("the addendum is empty: type the notes to add")
        if len(addendum) > MAX_NOTES_LENGTH:
            raise SignatureRefused(f"the addendum must have at most {MAX_NOTES_LENGTH} characters")
    result = await accounts.login(
        username,
        password,
        context="session_signature",
        details={"session_id": session_id, "meaning": meaning},
    )
    if not result.ok or result.user is None:
        raise await _refuse(accounts, action, session_id, username, f"not signed: {result.message}", meaning)
    user = result.user
    printed = user.full_name or user.username
    now = accounts.clock()
    try:
        async with accounts.sessions() as session, session.begin():
            if meaning == PERFORMED_BY:
                performer = await session.scalar(
                    select(SessionRow.tech_id).where(SessionRow.session_id == session_id)
                )
                if performer is not None and performer != user.tech_id:
                    raise SignatureError(
                        f"only the technician who performed session {session_id} signs it "
                        f"{PERFORMED_BY}; sign as {' or '.join(m for m in MEANINGS if m != PERFORMED_BY)}"
                    )
            existing = await on_session(session, lambda executor: signatures_of(executor, session_id))
            if addendum is None and any(
                s.kind == "signature" and s.username == user.username and s.meaning == meaning
                for s in existing
            ):
                raise SignatureError(f"session {session_id} is already signed {meaning} {printed}")
            record_id = await on_session(
                session,
                lambda executor: append_signature(
                    executor,
                    session_id,
                    tech_id=user.tech_id,
                    username=user.username,
                    printed_name=printed,
                    meaning=meaning,
                    now=now,
                    addendum=addendum,
                ),
            )
            await AuditRepository(session).add(
                action,
                "success",
                tech_id=user.tech_id,
                username=user.username,
                entity_type="session",
                entity_id=session_id,
                terminal=accounts.terminal,
                details={"meaning": meaning, "record_id": record_id, "printed_name": printed},
                timestamp=now,
            )
    except SignatureError as exc:
        raise await _refuse(accounts, action, session_id, user.username, str(exc), meaning) from None
    return Signed(record_id=record_id, session_id=session_id, printed_name=printed, meaning=meaning)


async def signatures(sessions: async_sessionmaker[AsyncSession], session_id: int) -> list[SessionSignature]:
    """The signatures and signed addenda of ``session_id``, oldest first."""
    async with sessions() as session:
        return await on_session(session, lambda executor: signatures_of(executor, session_id))


__all__ = [
    "ACTION_SESSION_ADDENDUM",
    "ACTION_SESSION_SIGN",
    "MEANINGS",
    "SignatureRefused",
    "Signed",
    "sign_session",
    "signatures",
]
