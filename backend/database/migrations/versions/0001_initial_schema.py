"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-22
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    
    op.create_table('jobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=64), nullable=False),
    sa.Column('status', sa.Enum('queued', 'running', 'succeeded', 'failed', 'cancelled', name='jobstatus', native_enum=False, length=32), nullable=False),
    sa.Column('params', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('result', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('done', sa.Integer(), nullable=False),
    sa.Column('total', sa.Integer(), nullable=True),
    sa.Column('message', sa.Text(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('worker', sa.String(length=128), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jobs'))
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_jobs_kind'), ['kind'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_status'), ['status'], unique=False)

    op.create_table('labels',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('sort_order', sa.Integer(), nullable=False),
    sa.Column('is_active', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_labels')),
    sa.UniqueConstraint('kind', 'name', name=op.f('uq_labels_kind'))
    )
    op.create_table('users',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('username', sa.String(length=80), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=False),
    sa.Column('role', sa.Enum('admin', 'radiologist', 'viewer', name='role', native_enum=False, length=32), nullable=False),
    sa.Column('is_active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('username', name=op.f('uq_users_username'))
    )
    op.create_table('images',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('status', sa.Enum('imported', 'rejected', name='imagestatus', native_enum=False, length=32), nullable=False),
    sa.Column('reason_code', sa.String(length=64), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('source_path', sa.Text(), nullable=False),
    sa.Column('file_size', sa.BigInteger(), nullable=False),
    sa.Column('format', sa.String(length=16), nullable=True),
    sa.Column('rows', sa.Integer(), nullable=True),
    sa.Column('columns', sa.Integer(), nullable=True),
    sa.Column('bits_stored', sa.Integer(), nullable=True),
    sa.Column('photometric', sa.String(length=32), nullable=True),
    sa.Column('modality', sa.String(length=16), nullable=True),
    sa.Column('body_part', sa.String(length=64), nullable=True),
    sa.Column('view_position', sa.String(length=16), nullable=True),
    sa.Column('laterality', sa.String(length=8), nullable=True),
    sa.Column('manufacturer', sa.String(length=128), nullable=True),
    sa.Column('patient_pseudonym', sa.String(length=64), nullable=True),
    sa.Column('study_uid', sa.String(length=64), nullable=True),
    sa.Column('series_uid', sa.String(length=64), nullable=True),
    sa.Column('sop_uid', sa.String(length=64), nullable=True),
    sa.Column('study_date', sa.String(length=8), nullable=True),
    sa.Column('meta', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('store_path', sa.Text(), nullable=True),
    sa.Column('thumbnail_path', sa.Text(), nullable=True),
    sa.Column('ingest_job_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['ingest_job_id'], ['jobs.id'], name=op.f('fk_images_ingest_job_id_jobs'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_images')),
    sa.UniqueConstraint('content_hash', name=op.f('uq_images_content_hash'))
    )
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_images_patient_pseudonym'), ['patient_pseudonym'], unique=False)
        batch_op.create_index(batch_op.f('ix_images_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_images_study_uid'), ['study_uid'], unique=False)

    op.create_table('model_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('path', sa.Text(), nullable=True),
    sa.Column('data_hash', sa.String(length=64), nullable=True),
    sa.Column('metrics', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('config', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_model_versions_job_id_jobs'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_versions')),
    sa.UniqueConstraint('kind', 'version', name=op.f('uq_model_versions_kind'))
    )
    op.create_table('boxes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('label_id', sa.Integer(), nullable=False),
    sa.Column('x', sa.Float(), nullable=False),
    sa.Column('y', sa.Float(), nullable=False),
    sa.Column('width', sa.Float(), nullable=False),
    sa.Column('height', sa.Float(), nullable=False),
    sa.Column('source', sa.String(length=32), nullable=False),
    sa.Column('score', sa.Float(), nullable=True),
    sa.Column('model_version_id', sa.Integer(), nullable=True),
    sa.Column('user_id', sa.Integer(), nullable=True),
    sa.Column('external_id', sa.String(length=128), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], name=op.f('fk_boxes_image_id_images'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['label_id'], ['labels.id'], name=op.f('fk_boxes_label_id_labels'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'], name=op.f('fk_boxes_model_version_id_model_versions'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_boxes_user_id_users'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_boxes'))
    )
    with op.batch_alter_table('boxes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_boxes_external_id'), ['external_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_boxes_image_id'), ['image_id'], unique=False)

    op.create_table('cluster_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('k', sa.Integer(), nullable=False),
    sa.Column('params', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('metrics', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=True),
    sa.Column('job_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_cluster_runs_job_id_jobs'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'], name=op.f('fk_cluster_runs_model_version_id_model_versions'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_cluster_runs'))
    )
    op.create_table('clusters',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('index', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('label_id', sa.Integer(), nullable=True),
    sa.Column('parent_id', sa.Integer(), nullable=True),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('stats', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['label_id'], ['labels.id'], name=op.f('fk_clusters_label_id_labels'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['parent_id'], ['clusters.id'], name=op.f('fk_clusters_parent_id_clusters'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['run_id'], ['cluster_runs.id'], name=op.f('fk_clusters_run_id_cluster_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_clusters')),
    sa.UniqueConstraint('run_id', 'index', name=op.f('uq_clusters_run_id'))
    )
    with op.batch_alter_table('clusters', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_clusters_run_id'), ['run_id'], unique=False)

    op.create_table('cluster_decisions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('cluster_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=True),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('label_id', sa.Integer(), nullable=True),
    sa.Column('payload', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('undone_by_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['cluster_id'], ['clusters.id'], name=op.f('fk_cluster_decisions_cluster_id_clusters'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['label_id'], ['labels.id'], name=op.f('fk_cluster_decisions_label_id_labels'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['undone_by_id'], ['cluster_decisions.id'], name=op.f('fk_cluster_decisions_undone_by_id_cluster_decisions'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_cluster_decisions_user_id_users'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_cluster_decisions'))
    )
    with op.batch_alter_table('cluster_decisions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_cluster_decisions_cluster_id'), ['cluster_id'], unique=False)

    op.create_table('cluster_memberships',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('cluster_id', sa.Integer(), nullable=False),
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('distance', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['cluster_id'], ['clusters.id'], name=op.f('fk_cluster_memberships_cluster_id_clusters'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], name=op.f('fk_cluster_memberships_image_id_images'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['run_id'], ['cluster_runs.id'], name=op.f('fk_cluster_memberships_run_id_cluster_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_cluster_memberships')),
    sa.UniqueConstraint('run_id', 'image_id', name=op.f('uq_cluster_memberships_run_id'))
    )
    with op.batch_alter_table('cluster_memberships', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_cluster_memberships_cluster_id'), ['cluster_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_cluster_memberships_image_id'), ['image_id'], unique=False)

    op.create_table('weak_labels',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('label_id', sa.Integer(), nullable=True),
    sa.Column('source', sa.Enum('cluster', 'manual', 'sorter', 'imported', name='labelsource', native_enum=False, length=32), nullable=False),
    sa.Column('decision_id', sa.Integer(), nullable=True),
    sa.Column('user_id', sa.Integer(), nullable=True),
    sa.Column('model_version_id', sa.Integer(), nullable=True),
    sa.Column('confidence', sa.Float(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('superseded_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['decision_id'], ['cluster_decisions.id'], name=op.f('fk_weak_labels_decision_id_cluster_decisions'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], name=op.f('fk_weak_labels_image_id_images'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['label_id'], ['labels.id'], name=op.f('fk_weak_labels_label_id_labels'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'], name=op.f('fk_weak_labels_model_version_id_model_versions'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_weak_labels_user_id_users'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_weak_labels'))
    )
    with op.batch_alter_table('weak_labels', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_weak_labels_image_id'), ['image_id'], unique=False)
        batch_op.create_index('uq_weak_labels_current', ['image_id'], unique=True, sqlite_where=sa.text('superseded_at IS NULL'), postgresql_where=sa.text('superseded_at IS NULL'))




def downgrade() -> None:
    
    with op.batch_alter_table('weak_labels', schema=None) as batch_op:
        batch_op.drop_index('uq_weak_labels_current', sqlite_where=sa.text('superseded_at IS NULL'), postgresql_where=sa.text('superseded_at IS NULL'))
        batch_op.drop_index(batch_op.f('ix_weak_labels_image_id'))

    op.drop_table('weak_labels')
    with op.batch_alter_table('cluster_memberships', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_cluster_memberships_image_id'))
        batch_op.drop_index(batch_op.f('ix_cluster_memberships_cluster_id'))

    op.drop_table('cluster_memberships')
    with op.batch_alter_table('cluster_decisions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_cluster_decisions_cluster_id'))

    op.drop_table('cluster_decisions')
    with op.batch_alter_table('clusters', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_clusters_run_id'))

    op.drop_table('clusters')
    op.drop_table('cluster_runs')
    with op.batch_alter_table('boxes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_boxes_image_id'))
        batch_op.drop_index(batch_op.f('ix_boxes_external_id'))

    op.drop_table('boxes')
    op.drop_table('model_versions')
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_images_study_uid'))
        batch_op.drop_index(batch_op.f('ix_images_status'))
        batch_op.drop_index(batch_op.f('ix_images_patient_pseudonym'))

    op.drop_table('images')
    op.drop_table('users')
    op.drop_table('labels')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_jobs_status'))
        batch_op.drop_index(batch_op.f('ix_jobs_kind'))

    op.drop_table('jobs')

