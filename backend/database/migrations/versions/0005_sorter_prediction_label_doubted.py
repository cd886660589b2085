"""sorter predictions remember which weak labels the version's cross-validation doubted

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('sorter_predictions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('label_doubted', sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('sorter_predictions', schema=None) as batch_op:
        batch_op.drop_column('label_doubted')
