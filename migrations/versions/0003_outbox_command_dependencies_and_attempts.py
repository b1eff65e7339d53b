"""outbox: commands that wait for another command; the history of every delivery attempt

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 04:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing commands depend on nothing (NULL): they are delivered exactly as before.
    with op.batch_alter_table("outbox_commands", schema=None) as batch_op:
        batch_op.add_column(sa.Column("after_command_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_outbox_commands_after_command_id_outbox_commands"),
            "outbox_commands",
            ["after_command_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch_op.create_index("ix_outbox_commands_after_command_id", ["after_command_id"], unique=False)

    # Starts empty: the attempts made before this revision are known only by their count and last
    # error, which stay on the command.
    op.create_table(
        "outbox_attempts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("command_id", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("crm_code", sa.String(length=64), nullable=True),
        sa.Column("batch_size", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["command_id"],
            ["outbox_commands.id"],
            name=op.f("fk_outbox_attempts_command_id_outbox_commands"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_attempts")),
    )
    with op.batch_alter_table("outbox_attempts", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_attempts_command_id", ["command_id", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("outbox_attempts", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_attempts_command_id")
    op.drop_table("outbox_attempts")

    with op.batch_alter_table("outbox_commands", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_commands_after_command_id")
        batch_op.drop_constraint(
            batch_op.f("fk_outbox_commands_after_command_id_outbox_commands"), type_="foreignkey"
        )
        batch_op.drop_column("after_command_id")
