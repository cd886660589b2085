"""Accounts: hashed passwords (werkzeug's scrypt), one role each."""
from __future__ import annotations

import secrets
from pathlib import Path

from sqlalchemy import select
from werkzeug.security import check_password_hash, generate_password_hash

from backend.config import Settings
from backend.database.session import Database
from backend.database.schema import Role, User

MIN_PASSWORD_LENGTH = 8


def create_user(db: Database, username: str, password: str, role: Role | str = Role.viewer) -> User:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"password must have at least {MIN_PASSWORD_LENGTH} characters")
    with db.session() as s:
        if s.scalar(select(User).where(User.username == username)) is not None:
            raise ValueError(f"user {username!r} exists")
        user = User(username=username, password_hash=generate_password_hash(password), role=Role(role))
        s.add(user)
    return user


def authenticate(db: Database, username: str, password: str) -> User | None:
    with db.session() as s:
        user = s.scalar(select(User).where(User.username == username, User.is_active.is_(True)))
    if user is None or not check_password_hash(user.password_hash, password):
        return None
    return user


def ensure_admin(db: Database, username: str = "admin", password: str | None = None) -> tuple[str, str] | None:
    """First run only: create an admin; returns (username, password) when one was made."""
    with db.session() as s:
        if s.scalar(select(User.id).limit(1)) is not None:
            return None
    password = password or secrets.token_urlsafe(12)
    create_user(db, username, password, Role.admin)
    return username, password


def initial_password_file(settings: Settings) -> Path:
    return settings.data_dir / "initial-admin-password"


def first_admin(settings: Settings, db: Database, username: str = "admin", password: str | None = None):
    """The installation secret, and on the first run an admin whose password is also kept in a
    private file (`samx init`, `samx demo`): (username, password) when one was made."""
    settings.secret()
    made = ensure_admin(db, username, password)
    if made:
        pw_file = initial_password_file(settings)
        pw_file.write_text(made[1] + "\n")
        pw_file.chmod(0o600)
    return made
