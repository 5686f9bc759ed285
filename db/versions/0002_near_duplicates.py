"""near-duplicate groups: perceptual hashes per image, groups with their parameters, members,
and the pairs people said are not duplicates

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('image_hashes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('short_hashes', sa.LargeBinary(), nullable=True),
    sa.Column('long_hashes', sa.LargeBinary(), nullable=True),
    sa.Column('flat', sa.Boolean(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('duration_ms', sa.Float(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('image_id', 'fingerprint', name='uq_image_hash_image_fingerprint')
    )
    with op.batch_alter_table('image_hashes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_image_hashes_image_id'), ['image_id'], unique=False)

    op.create_table('duplicate_groups',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('closed_by', sa.String(length=128), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('duplicate_groups', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_duplicate_groups_status'), ['status'], unique=False)

    op.create_table('duplicate_members',
    sa.Column('group_id', sa.Integer(), nullable=False),
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('distance', sa.Float(), nullable=True),
    sa.Column('cosine', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['group_id'], ['duplicate_groups.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('group_id', 'image_id')
    )
    with op.batch_alter_table('duplicate_members', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_duplicate_members_image_id'), ['image_id'], unique=False)

    op.create_table('distinct_pairs',
    sa.Column('image_a', sa.Integer(), nullable=False),
    sa.Column('image_b', sa.Integer(), nullable=False),
    sa.Column('annotator', sa.String(length=128), nullable=False),
    sa.Column('group_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['group_id'], ['duplicate_groups.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['image_a'], ['images.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['image_b'], ['images.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('image_a', 'image_b')
    )


def downgrade() -> None:
    op.drop_table('distinct_pairs')
    with op.batch_alter_table('duplicate_members', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_duplicate_members_image_id'))
    op.drop_table('duplicate_members')
    with op.batch_alter_table('duplicate_groups', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_duplicate_groups_status'))
    op.drop_table('duplicate_groups')
    with op.batch_alter_table('image_hashes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_image_hashes_image_id'))
    op.drop_table('image_hashes')
