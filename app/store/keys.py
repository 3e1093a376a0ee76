"""Every Redis key and channel of the project, in one place.

Room keys carry a hash tag (`{room:<id>}`) so that all keys of one room live in
one Redis Cluster slot and a Lua script may touch them together. Everything is
under one prefix (`REDIS_PREFIX`), so deployments and test sessions can share a
Redis server.

Cache layout of a room (the write-behind message cache):
  seq        string   last seq given out (INCR); missing = lost, re-seeded from PostgreSQL
  log        stream   the room's messages, entry id "<seq>-0", field "m" = message JSON;
                      holds every message not yet in PostgreSQL plus a short tail
  flushed    string   highest seq committed to PostgreSQL
  members    set      user ids of members; sentinel "*" marks it loaded (empty set != unknown)
  mver       string   the room's membership version counter (allocated under the room row lock)
  mvers      hash     user id -> signed version of the last membership change applied to the set
                      (+v joined, -v left/kicked/banned): older changes arriving late are ignored
  denied:<user> string  short-lived "404"/"403": PostgreSQL said this user is not a member (abuse cap)
  gone       string   short-lived: PostgreSQL said this room does not exist (abuse cap)
  cid:<user>:<client_id>  string  the seq a client_id produced (idempotent retries read the entry
                      from the stream, or from PostgreSQL once trimmed)
  flush_queued string  set while a flush_room job is queued (backlog trigger dedup)
  flush_lease  string  held by the worker flushing the room
Message lifecycle (edits, deletes, reactions) and read state (docs/api.md, app/lifecycle.py,
app/reads.py):
  version    string   the room's change counter (INCR per change; gap-free); missing = lost,
                      re-seeded from PostgreSQL (rooms.last_version, messages.version)
  state      hash     seq -> latest message JSON of a changed message (the overlay readers apply)
  changed    zset     seq -> version of its latest change not yet in PostgreSQL (the flush's to-do)
  reads      hash     user id -> last_read_seq (only moves forward)
  rdirty     set      user ids whose `reads` value PostgreSQL does not hold yet
  mnt:<username>  zset  seqs of messages @mentioning that user after their marker (score = seq)
A drained room's log, seq, flushed and members get a TTL (ROOM_CACHE_IDLE_TTL_S), removed
by the next accepted message; anything lost that way is rebuilt from PostgreSQL.

Redis Cluster (REDIS_CLUSTER=true) changes two key families, so that every script touches
keys of one slot only (the room's) and the Lua stays the same for both engines:
  pending    single node: one global set `<prefix>:pending_rooms`; cluster: one set per slot,
             `<prefix>:{<tag>}:pending`, where <tag> is a short string whose slot is the room
             keys' slot (`pending_set(room_id)`); readers go over `pending_sets()`.
  script rate keys (accept's `msg`, change's `chg`): single node `<prefix>:rate:<bucket>:<user>`;
             cluster `<prefix>:{room:<id>}:rate:<bucket>:<user>` (per user per room).
"""

from __future__ import annotations

from typing import Any

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot


class _SlotTags:
    """For each cluster slot, the first string "p<n>" (n = 0, 1, ...) that hashes to it.

    Deterministic (the smallest n wins), so every process and version names a slot's pending set
    the same. Filled lazily: a search for one slot records every slot it passes on the way, so
    all lookups together cost one walk of about 170k CRC16s (~0.2 s), spread over first uses.
    A pure function of the slot number, hence one table per process (not per Resources); a
    cluster process fills it at start-up (Resources.build), keeping the walk off the accept path.
    """

    def __init__(self) -> None:
        self.tags: dict[int, str] = {}
        self.next_n = 0

    def tag(self, slot: int) -> str:
        tags = self.tags
        found = tags.get(slot)
        if found is not None:
            return found
        n = self.next_n
        while slot not in tags:
            cand = f"p{n}"
            tags.setdefault(key_slot(cand.encode()), cand)
            n += 1
        self.next_n = n
        return tags[slot]

    def all(self) -> list[str]:
        for slot in range(REDIS_CLUSTER_HASH_SLOTS):
            self.tag(slot)
        return [self.tags[slot] for slot in range(REDIS_CLUSTER_HASH_SLOTS)]


SLOT_TAGS = _SlotTags()


class Keys:
    """Named key builders under one prefix; `cluster` chooses the Redis Cluster layout above."""

    def __init__(self, prefix: str = "chat", cluster: bool = False, fanout_rooms: bool = False) -> None:
        self.prefix = prefix
        self.cluster = cluster
        self._pending_global = f"{prefix}:pending_rooms"  # built once: the accept path asks per message
        # FANOUT_CHANNELS=rooms: events go to per-room and per-user channels (room_channel,
        # user_channel); otherwise both name the one global channel, built once.
        self.fanout_rooms = fanout_rooms
        self._events = f"{prefix}:events"

    @classmethod
    def from_settings(cls, settings: Any) -> "Keys":
        """The one place keys are built from settings (REDIS_PREFIX, REDIS_CLUSTER, FANOUT_CHANNELS)."""
        return cls(settings.redis_prefix, cluster=settings.redis_cluster,
                   fanout_rooms=getattr(settings, "fanout_channels", "global") == "rooms")

    # -- per room (hash-tagged) -------------------------------------------
    def _room(self, room_id: str) -> str:
        return f"{self.prefix}:{{room:{room_id}}}"

    def room_seq(self, room_id: str) -> str:
        return f"{self._room(room_id)}:seq"

    def room_log(self, room_id: str) -> str:
        return f"{self._room(room_id)}:log"

    def room_flushed(self, room_id: str) -> str:
        return f"{self._room(room_id)}:flushed"

    def room_members(self, room_id: str) -> str:
        return f"{self._room(room_id)}:members"

    def room_mver(self, room_id: str) -> str:
        return f"{self._room(room_id)}:mver"

    def room_mvers(self, room_id: str) -> str:
        return f"{self._room(room_id)}:mvers"

    def room_denied(self, room_id: str, user_id: str) -> str:
        return f"{self._room(room_id)}:denied:{user_id}"

    def room_gone(self, room_id: str) -> str:
        return f"{self._room(room_id)}:gone"

    def room_client_id(self, room_id: str, sender_id: str, client_id: str) -> str:
        return f"{self._room(room_id)}:cid:{sender_id}:{client_id}"

    def room_flush_queued(self, room_id: str) -> str:
        return f"{self._room(room_id)}:flush_queued"

    def room_flush_lease(self, room_id: str) -> str:
        return f"{self._room(room_id)}:flush_lease"

    def room_version(self, room_id: str) -> str:
        return f"{self._room(room_id)}:version"

    def room_state(self, room_id: str) -> str:
        return f"{self._room(room_id)}:state"

    def room_changed(self, room_id: str) -> str:
        return f"{self._room(room_id)}:changed"

    def room_reads(self, room_id: str) -> str:
        return f"{self._room(room_id)}:reads"

    def room_reads_dirty(self, room_id: str) -> str:
        return f"{self._room(room_id)}:rdirty"

    def room_mentions_prefix(self, room_id: str) -> str:
        """Scripts that find old mentions in a stored message build their keys from this."""
        return f"{self._room(room_id)}:mnt:"

    def room_mentions(self, room_id: str, username: str) -> str:
        return f"{self.room_mentions_prefix(room_id)}{username.lower()}"

    def room_slot(self, room_id: str) -> int:
        """The cluster slot of every key of the room."""
        return key_slot(f"room:{room_id}".encode())

    def pending_set(self, room_id: str) -> str:
        """The pending set a room's id goes into (the worker's to-do list): the global set on a
        single node, on a cluster the set of the room's slot, so scripts stay in one slot."""
        if not self.cluster:
            return self._pending_global
        return f"{self.prefix}:{{{SLOT_TAGS.tag(self.room_slot(room_id))}}}:pending"

    def pending_sets(self) -> list[str]:
        """Every pending set: [the global one] on a single node, one per slot on a cluster."""
        if not self.cluster:
            return [self._pending_global]
        return [f"{self.prefix}:{{{tag}}}:pending" for tag in SLOT_TAGS.all()]

    def script_rate(self, bucket: str, room_id: str, subject: str) -> str:
        """A rate key a room's script counts in: global per user on a single node; per user
        and room on a cluster (a key of the room's slot; a global one would cross slots)."""
        if not self.cluster:
            return self.rate(bucket, subject)
        return f"{self._room(room_id)}:rate:{bucket}:{subject}"

    # -- global ------------------------------------------------------------
    def pending_rooms(self) -> str:
        """Single node: the set of room ids with messages not yet in PostgreSQL. Code that
        writes or reads the pending state goes through pending_set / pending_sets (cluster)."""
        return self._pending_global

    def redis_run_id(self) -> str:
        """The Redis `run_id` the flush tick last saw: a new one means Redis restarted (or a
        replica took over) and may have come back behind PostgreSQL."""
        return f"{self.prefix}:redis_run_id"

    def events_channel(self) -> str:
        """Pub/sub channel every server process subscribes to for fan-out (FANOUT_CHANNELS=global)."""
        return self._events

    # -- fan-out channels (app/realtime/fanout.py) -----------------------------------------
    # FANOUT_CHANNELS=rooms: one channel per room, in the room's slot (a room's scripts publish
    # it), and one per user, in the user's slot; a process subscribes to those its connections
    # need. Plain PUBLISH has no key, so a script may publish a channel of another slot too.
    def room_channel(self, room_id: str) -> str:
        """Where a room's events go: `<prefix>:{room:<id>}:ev`, or the global channel."""
        if not self.fanout_rooms:
            return self._events
        return f"{self._room(room_id)}:ev"

    def user_channel(self, user_id: str) -> str:
        """Where a user's events go: `<prefix>:{user:<id>}:ev`, or the global channel."""
        if not self.fanout_rooms:
            return self._events
        return f"{self.prefix}:{{user:{user_id}}}:ev"

    def channels_pattern(self) -> str:
        """PSUBSCRIBE pattern matching every event channel of this prefix (tests, tools)."""
        return f"{self.prefix}:{{*}}:ev" if self.fanout_rooms else self._events

    def revoked_family(self, family_id: str) -> str:
        """Marks a logged-out refresh family so its access tokens stop at once."""
        return f"{self.prefix}:revoked:{family_id}"

    def rate(self, bucket: str, subject: str) -> str:
        return f"{self.prefix}:rate:{bucket}:{subject}"

    def dramatiq_namespace(self) -> str:
        return f"{self.prefix}-dramatiq"

    # -- per user (hash-tagged `{user:<id>}`: one slot per user; spec F, app/store/user_rooms.py) --
    # The connect reads a user's rooms from here instead of PostgreSQL. Scripts touch these
    # two keys only (never room keys with them: one slot per script on a cluster).
    def _user(self, user_id: str) -> str:
        return f"{self.prefix}:{{user:{user_id}}}"

    def user_rooms(self, user_id: str) -> str:
        """string: the user's room ids, space-separated, oldest membership first ("" = none);
        missing = not cached (loaded from PostgreSQL); TTL USER_ROOMS_TTL_S."""
        return f"{self._user(user_id)}:rooms"

    def user_rooms_gen(self, user_id: str) -> str:
        """string: the user's membership generation, INCR'd (and `rooms` dropped) after every
        membership change commits; a loader writes `rooms` only if it is still what it read."""
        return f"{self._user(user_id)}:rgen"
