"""weak labels remember the Label Studio annotation that set them

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('weak_labels', schema=None) as batch_op:
        batch_op.add_column(sa.Column('annotation_id', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_weak_labels_annotation_id'), ['annotation_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_weak_labels_annotation_id_annotations'), 'annotations',
                                    ['annotation_id'], ['id'], ondelete='SET NULL')


def downgrade() -> None:
    with op.batch_alter_table('weak_labels', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_weak_labels_annotation_id_annotations'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_weak_labels_annotation_id'))
        batch_op.drop_column('annotation_id')
