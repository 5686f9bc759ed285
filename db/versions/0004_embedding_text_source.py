"""embedding text source: which OCR row a text embedding's text came from (stale embeddings)

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: a plain ADD COLUMN, no table copy on SQLite. Older rows stay NULL
    # (source unknown); their text hash in the fingerprint still tells fresh from stale.
    op.add_column('embeddings', sa.Column('text_source', sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('embeddings') as batch:
        batch.drop_column('text_source')
