"""Schema, migrations and the invariants the models promise, on SQLite and PostgreSQL."""
from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError

from backend.database.session import DEFAULT_LESIONS, DEFAULT_REGIONS, alembic_config
from backend.database.schema import (Base, Cluster, ClusterRun, Image, ImageStatus, Label, LabelSource, User, WeakLabel,
                            utcnow)
from backend.database.users import authenticate, create_user


def test_migrations_build_exactly_the_models_schema(db):
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def test_migrations_downgrade_and_upgrade_again(db):
    command.downgrade(alembic_config(db.engine), "base")
    with db.engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() is None
    db.upgrade()
    db.upgrade()  # idempotent
    with db.engine.connect() as conn:
        head = ScriptDirectory.from_config(alembic_config(db.engine)).get_current_head()
        assert head == "0006" and MigrationContext.configure(conn).get_current_revision() == head


def test_vocabulary_is_seeded_once(db):
    assert db.seed_vocabulary() == 0
    with db.session() as s:
        regions = s.scalars(select(Label.name).where(Label.kind == "region")).all()
        lesions = s.scalars(select(Label.name).where(Label.kind == "lesion")).all()
    assert len(regions) == len(DEFAULT_REGIONS) == 28 and set(lesions) == set(DEFAULT_LESIONS)


def _image(s, h="a" * 64) -> Image:
    img = Image(content_hash=h, status=ImageStatus.imported, source_path="/x", file_size=1, meta={"k": [1, 2]})
    s.add(img)
    s.flush()
    return img


def test_content_hash_is_unique(db):
    with db.session() as s:
        _image(s)
    with pytest.raises(IntegrityError):
        with db.session() as s:
            _image(s)


def test_only_one_current_weak_label_per_image_and_history_is_kept(db):
    with db.session() as s:
        img = _image(s)
        knee, hand = (s.scalar(select(Label.id).where(Label.name == n)) for n in ("knee", "hand"))
        s.add(WeakLabel(image_id=img.id, label_id=knee, source=LabelSource.cluster))
    with pytest.raises(IntegrityError):
        with db.session() as s:
            s.add(WeakLabel(image_id=img.id, label_id=hand, source=LabelSource.manual))
    with db.session() as s:  # the right way: supersede, then add
        current = s.scalar(select(WeakLabel).where(WeakLabel.image_id == img.id, WeakLabel.superseded_at.is_(None)))
        current.superseded_at = utcnow()
        s.flush()
        s.add(WeakLabel(image_id=img.id, label_id=hand, source=LabelSource.manual))
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(WeakLabel).where(WeakLabel.image_id == img.id)) == 2


def test_concurrent_cluster_edits_conflict_instead_of_overwriting(db):
    with db.session() as s:
        run = ClusterRun(k=2)
        s.add(run)
        s.flush()
        s.add(Cluster(run_id=run.id, index=0))
    first, second = db.sessionmaker(), db.sessionmaker()
    a = first.scalar(select(Cluster))
    b = second.scalar(select(Cluster))
    a.status = "named"
    first.commit()
    b.status = "discarded"
    with pytest.raises(StaleDataError):
        second.commit()
    second.rollback()
    first.close(), second.close()
    with db.session() as s:
        c = s.scalar(select(Cluster))
        assert c.status == "named" and c.version == 2


def test_passwords_are_hashed_and_checked(db):
    create_user(db, "rad", "correct horse", "radiologist")
    with db.session() as s:
        stored = s.scalar(select(User.password_hash).where(User.username == "rad"))
    assert "correct horse" not in stored and stored.startswith(("scrypt:", "pbkdf2:"))
    assert authenticate(db, "rad", "correct horse").role.value == "radiologist"
    assert authenticate(db, "rad", "wrong") is None
    with pytest.raises(ValueError):
        create_user(db, "short", "1234")


def test_json_metadata_round_trips(db):
    with db.session() as s:
        img = _image(s, "b" * 64)
        img.meta = {"pixel_spacing": [0.1, 0.2], "extra": {"frames": 3}}
    with db.session() as s:
        assert s.get(Image, img.id).meta == {"pixel_spacing": [0.1, 0.2], "extra": {"frames": 3}}
