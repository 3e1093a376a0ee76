from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('models', '0001_initial')]

    initial = False

    operations = [
        ops.CreateModel(
            name='DeadLetter',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('room_id', fields.UUIDField(db_index=True)),
                ('seq', fields.BigIntField()),
                ('message_id', fields.UUIDField(null=True)),
                ('entry', fields.BinaryField()),
                ('digest', fields.CharField(max_length=40)),
                ('error', fields.TextField(unique=False)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'dead_letters', 'app': 'models', 'unique_together': (('room_id', 'seq', 'digest'),), 'pk_attr': 'id', 'table_description': 'A cache entry the flush could not store, set aside so the flush goes on.'},
            bases=['Model'],
        ),
        # The flush now keeps rooms.last_seq at or above every seq it wrote (re-seeding a lost
        # counter takes it, so seqs the retention prune deleted are never handed out again):
        # bring the rooms flushed before this migration up to date once.
        ops.RunSQL(
            "UPDATE rooms r SET last_seq = m.top FROM (SELECT room_id, MAX(seq) AS top FROM messages"
            " GROUP BY room_id) m WHERE m.room_id = r.id AND r.last_seq < m.top",
            reverse_sql="SELECT 1",
        ),
    ]
