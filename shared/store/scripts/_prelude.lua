-- Prepended to every script by the loader. Every script takes one argument, ARGV[1]: its
-- named arguments as one JSON document (A below), so a new field never renumbers others.
local A = cjson.decode(ARGV[1])

-- Append one event to the session's stream (kept events_ttl_ms after its last write) and
-- announce it on the session's channel as "<entry id> <turn id> <type> <data>".
local function emit(stream, turn_id, kind, data)
  local id = redis.call("XADD", stream, "*", "turn", turn_id, "type", kind, "data", data)
  redis.call("PEXPIRE", stream, A.events_ttl_ms)
  redis.call("PUBLISH", A.channel, id .. " " .. turn_id .. " " .. kind .. " " .. data)
  return id
end

local function expire(ttl_ms, first, last)
  for i = first, last do
    redis.call("PEXPIRE", KEYS[i], ttl_ms)
  end
end

local function is_active(rec)  -- rec: a decoded record, or nil/false for a missing one
  return type(rec) == "table" and (rec.status == "queued" or rec.status == "running")
end

-- The characters (code points) of a UTF-8 string, as Python's len() counts them.
local function chars(text)
  local _, count = string.gsub(text, "[^\128-\191]", "")
  return count
end

-- A turn's outbox message (its webhook event), written in the same step as its status.
local function announce(outbox, rec, kind, now, ttl_ms)
  redis.call("RPUSH", outbox, cjson.encode({
    msg = "msg_" .. rec.id, type = kind, turn_id = rec.id, at = now}))
  redis.call("PEXPIRE", outbox, ttl_ms)
end

-- Cancel a queued or running turn: its record says why (and, for a double text, which
-- turn did it), its final event is appended, and its turn.cancelled webhook event written
-- (to the outbox key) when the turn has a webhook URL or ``announce_all`` (the tenant's
-- endpoints take the event). ``keep``: its user message stays in history (written when
-- its entry leaves the head of the mailbox, so in order). Returns whether it was running:
-- then the lock holder must stop (``stop_attempt``).
local function cancel_turn(turns, events, outbox, rec, reason, by, keep, announce_all)
  local was_running = rec.status == "running"
  rec.status = "cancelled"
  rec.cancellation = {reason = reason, by = by or cjson.null}
  rec.finished_at = A.now_ms
  if keep then
    rec.keep = true
  end
  local encoded = cjson.encode(rec)
  redis.call("HSET", turns, rec.id, encoded)
  emit(events, rec.id, "final", encoded)
  local own = rec.webhook ~= nil and rec.webhook ~= cjson.null
  if rec.kind == "message" and (announce_all or own) then
    announce(outbox, rec, "turn.cancelled", A.now_ms, A.session_ttl_ms)
  end
  return was_running
end

-- Tell the lock holder of a session that its running attempt is void: the generation in
-- the session's meta moves on (commits, deltas and renewals of the old one are refused,
-- so a missed notice costs time, never correctness), and every worker hears it at once.
local function stop_attempt(meta, member)
  local generation = redis.call("HINCRBY", meta, "stops", 1)
  redis.call("PUBLISH", A.control, member .. " " .. generation)
  return generation
end
