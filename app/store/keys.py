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
"""

from __future__ import annotations


class Keys:
    """Named key builders under one prefix."""

    def __init__(self, prefix: str = "chat") -> None:
        self.prefix = prefix

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

    # -- global ------------------------------------------------------------
    def pending_rooms(self) -> str:
        """Set of room ids with messages not yet in PostgreSQL (the worker's to-do list)."""
        return f"{self.prefix}:pending_rooms"

    def redis_run_id(self) -> str:
        """The Redis `run_id` the flush tick last saw: a new one means Redis restarted (or a
        replica took over) and may have come back behind PostgreSQL."""
        return f"{self.prefix}:redis_run_id"

    def events_channel(self) -> str:
        """Pub/sub channel every server process subscribes to for fan-out."""
        return f"{self.prefix}:events"

    def revoked_family(self, family_id: str) -> str:
        """Marks a logged-out refresh family so its access tokens stop at once."""
        return f"{self.prefix}:revoked:{family_id}"

    def rate(self, bucket: str, subject: str) -> str:
        return f"{self.prefix}:rate:{bucket}:{subject}"

    def dramatiq_namespace(self) -> str:
        return f"{self.prefix}-dramatiq"
