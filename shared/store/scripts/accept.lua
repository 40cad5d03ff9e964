-- accept: record a new turn (a message or a session clear) and queue it on the mailbox.
--
-- KEYS[1] meta   KEYS[2] mailbox   KEYS[3] turns   KEYS[4] turn_index   KEYS[5] history
-- KEYS[6] events   KEYS[7] lock   KEYS[8] idem (unused when A.fingerprint is "")
-- A: turn (the queued record, without seq and events_from: the id of its first event), fingerprint (of the request, "" without an
--    Idempotency-Key), idem_ttl_ms, max_pending, max_history (messages the history may
--    hold, counting two for each pending message turn), existing_only (refuse an unknown
--    session), now_ms, session_ttl_ms, events_ttl_ms, channel
-- Returns {"OK", turn id, seq, lock held (0|1), events_from} | {"REPLAY", turn id}
--       | {"CONFLICT", turn id} | {"FULL", pending count} | {"HISTORY_FULL", messages}
--       | {"NOT_FOUND"}
local rec = A.turn
if A.fingerprint ~= "" then
  local seen = redis.call("GET", KEYS[8])
  if seen then
    local sep = string.find(seen, "|", 1, true)
    local old_id = string.sub(seen, 1, sep - 1)
    if string.sub(seen, sep + 1) == A.fingerprint then
      return {"REPLAY", old_id}
    end
    return {"CONFLICT", old_id}
  end
end
if A.existing_only and redis.call("EXISTS", KEYS[1]) == 0 then
  return {"NOT_FOUND"}
end
local pending = redis.call("LLEN", KEYS[2])
if pending >= A.max_pending then
  return {"FULL", pending}
end
if rec.kind == "message" then
  -- A clear is always accepted: it is how a full session is emptied.
  local held = redis.call("LLEN", KEYS[5]) + 2 * pending
  if held + 2 > A.max_history then
    return {"HISTORY_FULL", held}
  end
end

local seq = redis.call("HINCRBY", KEYS[1], "next_seq", 1)
redis.call("HSETNX", KEYS[1], "created_at", A.now_ms)
redis.call("HSET", KEYS[1], "updated_at", A.now_ms)
rec.seq = seq
rec.events_from = emit(KEYS[6], rec.id, "status",
  cjson.encode({status = rec.status, seq = seq, attempt = 0}))
redis.call("HSET", KEYS[3], rec.id, cjson.encode(rec))
redis.call("ZADD", KEYS[4], seq, rec.id)
redis.call("RPUSH", KEYS[2], rec.id)
expire(A.session_ttl_ms, 1, 5)
if A.fingerprint ~= "" then
  redis.call("SET", KEYS[8], rec.id .. "|" .. A.fingerprint, "PX", A.idem_ttl_ms)
end
return {"OK", rec.id, seq, redis.call("EXISTS", KEYS[7]), rec.events_from}
