"""label context: how each labelled meme was chosen (queue order, rank, score, exploration pick,
the learner's suggestion and whether it was shown) and the time spent on it

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

COLUMNS = (
    ('queue_order', sa.String(length=32)),
    ('queue_rank', sa.Integer()),
    ('queue_score', sa.Float()),
    ('exploration', sa.Boolean()),
    ('suggestion', sa.String(length=16)),
    ('suggestion_prob', sa.Float()),
    ('suggestion_shown', sa.Boolean()),
    ('seconds_spent', sa.Float()),
)


def upgrade() -> None:
    # Nullable, no default: plain ADD COLUMNs, no table copy on SQLite. Older labels stay NULL
    # (how they were chosen is unknown), which honest metrics count as "not known to be random".
    for name, type_ in COLUMNS:
        op.add_column('labels', sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('labels') as batch:
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
