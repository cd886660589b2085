"""sorter predictions

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""
from alembic import op
import sqlalchemy as sa

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('sorter_predictions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=False),
    sa.Column('label_id', sa.Integer(), nullable=True),
    sa.Column('confidence', sa.Float(), nullable=False),
    sa.Column('second_label_id', sa.Integer(), nullable=True),
    sa.Column('second_confidence', sa.Float(), nullable=True),
    sa.Column('ood_score', sa.Float(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], name=op.f('fk_sorter_predictions_image_id_images'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['label_id'], ['labels.id'], name=op.f('fk_sorter_predictions_label_id_labels'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'], name=op.f('fk_sorter_predictions_model_version_id_model_versions'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['second_label_id'], ['labels.id'], name=op.f('fk_sorter_predictions_second_label_id_labels'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sorter_predictions')),
    sa.UniqueConstraint('model_version_id', 'image_id', name=op.f('uq_sorter_predictions_model_version_id'))
    )
    with op.batch_alter_table('sorter_predictions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sorter_predictions_image_id'), ['image_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_sorter_predictions_model_version_id'), ['model_version_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('sorter_predictions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sorter_predictions_model_version_id'))
        batch_op.drop_index(batch_op.f('ix_sorter_predictions_image_id'))
    op.drop_table('sorter_predictions')
