"""team labeling: users and roles, adjudications, label claims, audit log, queue indexes

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('users',
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('added_by', sa.String(length=320), nullable=False),
    sa.Column('added_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('email')
    )
    op.create_table('adjudications',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('label', sa.String(length=16), nullable=False),
    sa.Column('reviewer', sa.String(length=320), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_adjudications_image', 'adjudications', ['image_id', 'id'], unique=False)

    op.create_table('label_claims',
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('annotator', sa.String(length=128), nullable=False),
    sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('image_id', 'annotator')
    )
    op.create_index('ix_label_claims_claimed_at', 'label_claims', ['claimed_at'], unique=False)

    op.create_table('audit_log',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=320), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('detail', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    # the Label page's queue at 100,000 memes (plain CREATE INDEX: no table copy on SQLite)
    op.create_index('ix_images_path_id_missing', 'images', ['path', 'id', 'missing'], unique=False)
    op.create_index('ix_labels_annotator_image', 'labels', ['annotator', 'image_id', 'revoked_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_labels_annotator_image', table_name='labels')
    op.drop_index('ix_images_path_id_missing', table_name='images')
    for table in ('audit_log', 'label_claims', 'adjudications', 'users'):
        op.drop_table(table)  # their indexes go with them
