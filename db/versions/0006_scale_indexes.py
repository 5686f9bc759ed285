"""scale indexes: the labels' created_at and revoked_at, so the consensus cache's fingerprint
reads two index ends instead of every label row (a million memes, issue 25)

Revision ID: 0006
Revises: 0005
"""
from alembic import op


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_labels_created_at', 'labels', ['created_at'])
    op.create_index('ix_labels_revoked_at', 'labels', ['revoked_at'])


def downgrade() -> None:
    op.drop_index('ix_labels_revoked_at', table_name='labels')
    op.drop_index('ix_labels_created_at', table_name='labels')
