from tortoise import migrations
from tortoise.migrations import operations as ops
from models.room import Role
from tortoise.fields.base import OnDelete
from uuid import uuid4
from tortoise import fields

class Migration(migrations.Migration):
    initial = True

    operations = [
        ops.CreateModel(
            name='User',
            fields=[
                ('id', fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True)),
                ('username', fields.CharField(max_length=32)),
                ('username_lower', fields.CharField(unique=True, max_length=32)),
                ('display_name', fields.CharField(max_length=64)),
                ('password_hash', fields.CharField(max_length=255)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'users', 'app': 'models', 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Room',
            fields=[
                ('id', fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True)),
                ('name', fields.CharField(max_length=64)),
                ('topic', fields.CharField(default='', max_length=256)),
                ('is_private', fields.BooleanField(default=False)),
                ('owner', fields.ForeignKeyField('models.User', source_field='owner_id', db_constraint=True, to_field='id', related_name='owned_rooms', on_delete=OnDelete.RESTRICT)),
                ('created_at', fields.DatetimeField(db_index=True, auto_now=False, auto_now_add=True)),
                ('last_seq', fields.BigIntField(default=0)),
            ],
            options={'table': 'rooms', 'app': 'models', 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='File',
            fields=[
                ('id', fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True)),
                ('room', fields.ForeignKeyField('models.Room', source_field='room_id', db_constraint=True, to_field='id', related_name='files', on_delete=OnDelete.CASCADE)),
                ('uploader', fields.ForeignKeyField('models.User', source_field='uploader_id', null=True, db_constraint=True, to_field='id', related_name='files', on_delete=OnDelete.SET_NULL)),
                ('name', fields.CharField(max_length=255)),
                ('mime', fields.CharField(null=True, max_length=128)),
                ('claimed_mime', fields.CharField(null=True, max_length=128)),
                ('size', fields.BigIntField(default=0)),
                ('status', fields.CharField(default='processing', max_length=12)),
                ('reason', fields.CharField(null=True, max_length=255)),
                ('storage_path', fields.CharField(null=True, max_length=255)),
                ('thumbnail_path', fields.CharField(null=True, max_length=255)),
                ('body', fields.TextField(default='', unique=False)),
                ('client_id', fields.CharField(null=True, max_length=64)),
                ('message_seq', fields.BigIntField(null=True)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('expires_at', fields.DatetimeField(null=True, db_index=True, auto_now=False, auto_now_add=False)),
                ('expired', fields.BooleanField(default=False)),
            ],
            options={'table': 'files', 'app': 'models', 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Membership',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('room', fields.ForeignKeyField('models.Room', source_field='room_id', db_constraint=True, to_field='id', related_name='memberships', on_delete=OnDelete.CASCADE)),
                ('user', fields.ForeignKeyField('models.User', source_field='user_id', db_constraint=True, to_field='id', related_name='memberships', on_delete=OnDelete.CASCADE)),
                ('role', fields.CharEnumField(default=Role.MEMBER, description='OWNER: owner\nADMIN: admin\nMEMBER: member', enum_type=Role, max_length=8)),
                ('banned', fields.BooleanField(default=False)),
                ('joined_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'memberships', 'app': 'models', 'unique_together': (('room', 'user'),), 'pk_attr': 'id', 'table_description': "A user's place in a room. A banned user keeps a row with banned=True and is not a member."},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Message',
            fields=[
                ('id', fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True)),
                ('room', fields.ForeignKeyField('models.Room', source_field='room_id', db_constraint=True, to_field='id', related_name='messages', on_delete=OnDelete.CASCADE)),
                ('seq', fields.BigIntField()),
                ('sender', fields.ForeignKeyField('models.User', source_field='sender_id', null=True, db_constraint=True, to_field='id', related_name='messages', on_delete=OnDelete.SET_NULL)),
                ('kind', fields.CharField(max_length=8)),
                ('body', fields.TextField(unique=False)),
                ('file', fields.ForeignKeyField('models.File', source_field='file_id', null=True, db_constraint=True, to_field='id', related_name='messages', on_delete=OnDelete.SET_NULL)),
                ('client_id', fields.CharField(null=True, max_length=64)),
                ('created_at', fields.DatetimeField(db_index=True, auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'messages', 'app': 'models', 'unique_together': (('room', 'seq'),), 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='TokenFamily',
            fields=[
                ('id', fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True)),
                ('user', fields.ForeignKeyField('models.User', source_field='user_id', db_constraint=True, to_field='id', related_name='token_families', on_delete=OnDelete.CASCADE)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('revoked_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'token_families', 'app': 'models', 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='RefreshToken',
            fields=[
                ('jti', fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True)),
                ('family', fields.ForeignKeyField('models.TokenFamily', source_field='family_id', db_constraint=True, to_field='id', related_name='tokens', on_delete=OnDelete.CASCADE)),
                ('issued_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('expires_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('used_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'refresh_tokens', 'app': 'models', 'pk_attr': 'jti'},
            bases=['Model'],
        ),
    ]
