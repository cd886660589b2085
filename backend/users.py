"""Accounts: hashed passwords (werkzeug's scrypt), one role each."""
from __future__ import annotations

import secrets

from sqlalchemy import select
from werkzeug.security import check_password_hash, generate_password_hash

from backend.db import Database
from backend.models import Role, User

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
