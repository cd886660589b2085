"""label studio annotations

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('annotations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('source', sa.String(length=32), nullable=False),
    sa.Column('external_id', sa.String(length=128), nullable=False),
    sa.Column('task_external_id', sa.String(length=128), nullable=True),
    sa.Column('annotator', sa.String(length=255), nullable=True),
    sa.Column('abnormal', sa.Boolean(), nullable=True),
    sa.Column('region_label_id', sa.Integer(), nullable=True),
    sa.Column('cancelled', sa.Boolean(), nullable=False),
    sa.Column('external_updated_at', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], name=op.f('fk_annotations_image_id_images'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['region_label_id'], ['labels.id'], name=op.f('fk_annotations_region_label_id_labels'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_annotations')),
    sa.UniqueConstraint('source', 'external_id', name=op.f('uq_annotations_source'))
    )
    with op.batch_alter_table('annotations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_annotations_image_id'), ['image_id'], unique=False)

    with op.batch_alter_table('boxes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('annotation_id', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_boxes_annotation_id'), ['annotation_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_boxes_annotation_id_annotations'), 'annotations', ['annotation_id'], ['id'], ondelete='CASCADE')



def downgrade() -> None:
    with op.batch_alter_table('boxes', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_boxes_annotation_id_annotations'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_boxes_annotation_id'))
        batch_op.drop_column('annotation_id')

    with op.batch_alter_table('annotations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_annotations_image_id'))

    op.drop_table('annotations')
