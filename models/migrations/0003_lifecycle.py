from tortoise import migrations
from tortoise.contrib.postgres.fields import ArrayField
from tortoise.migrations import operations as ops
from tortoise import fields


class Migration(migrations.Migration):
    """Message lifecycle and read state (issue 12): edits, tombstones, replies, mentions,
    reactions, the per-room change counter, read markers, and full-text search."""

    dependencies = [('models', '0002_dead_letters')]

    initial = False

    operations = [
        ops.AddField(model_name='Message', name='edited_at', field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
        ops.AddField(model_name='Message', name='deleted', field=fields.BooleanField(default=False)),
        ops.AddField(model_name='Message', name='version', field=fields.BigIntField(default=0)),
        ops.AddField(model_name='Message', name='reply_to', field=fields.BigIntField(null=True)),
        ops.AddField(model_name='Message', name='mentions', field=ArrayField('text', null=True)),
        ops.AddField(model_name='Message', name='reactions', field=fields.JSONField(null=True)),
        ops.AddField(model_name='Room', name='last_version', field=fields.BigIntField(default=0)),
        ops.AddField(model_name='Membership', name='last_read_seq', field=fields.BigIntField(default=0)),
        # Database-side defaults: the flush COPYs rows without these columns.
        ops.RunSQL(
            "ALTER TABLE messages ALTER COLUMN deleted SET DEFAULT false, ALTER COLUMN version SET DEFAULT 0;"
            " ALTER TABLE rooms ALTER COLUMN last_version SET DEFAULT 0;"
            " ALTER TABLE memberships ALTER COLUMN last_read_seq SET DEFAULT 0",
            reverse_sql="SELECT 1",
        ),
        # sync's "changed since V": only changed rows are indexed.
        ops.RunSQL(
            "CREATE INDEX IF NOT EXISTS messages_room_version ON messages (room_id, version) WHERE version > 0",
            reverse_sql="DROP INDEX IF EXISTS messages_room_version",
        ),
        # Search (app/search.py) matches exactly this expression; 'simple': no stemming, any language.
        ops.RunSQL(
            "CREATE INDEX IF NOT EXISTS messages_body_fts ON messages USING gin (to_tsvector('simple', body))",
            reverse_sql="DROP INDEX IF EXISTS messages_body_fts",
        ),
    ]
