-- cancel: cancel a queued or running turn at a client's request; nothing of it is kept.
--
-- KEYS[1] meta   KEYS[2] mailbox   KEYS[3] turns   KEYS[4] events   KEYS[5] outbox
-- KEYS[6] lock
-- A: turn_id, reason ("requested" | "disconnected": its client went away), announce
--    (write a turn.cancelled webhook event), member, control, now_ms,
--    session_ttl_ms, events_ttl_ms, channel
-- Returns {"CANCELLED", record JSON, was running (0|1), needs a wake-up (0|1)}
--       | {"FINISHED", record JSON} (it
--         had already ended: completed, failed, or cancelled before) | {"NOT_FOUND"}.
-- A running turn's worker is told to stop (stop_attempt); whatever it still tries to
-- write of the turn is refused, and the session's next turn runs after it.
local raw = redis.call("HGET", KEYS[3], A.turn_id)
if not raw then
  return {"NOT_FOUND"}
end
local rec = cjson.decode(raw)
if not is_active(rec) then
  return {"FINISHED", raw}
end
local running = cancel_turn(KEYS[3], KEYS[4], KEYS[5], rec, A.reason, nil, false,
  A.announce)
redis.call("LREM", KEYS[2], 1, rec.id)
redis.call("HINCRBY", KEYS[1], "finished", 1)
redis.call("HSET", KEYS[1], "updated_at", A.now_ms)
if running then
  stop_attempt(KEYS[1], A.member)
end
-- Nobody drains what is left (interrupted turns' kept messages, say): a wake-up is due.
local orphaned = redis.call("LLEN", KEYS[2]) > 0 and redis.call("EXISTS", KEYS[6]) == 0
return {"CANCELLED", redis.call("HGET", KEYS[3], rec.id), running and 1 or 0,
  orphaned and 1 or 0}
