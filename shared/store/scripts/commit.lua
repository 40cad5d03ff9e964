-- commit: fenced, exactly-once, in-order completion of the mailbox head; then release the
-- lock if nothing else is pending.
--
-- KEYS[1] lock   KEYS[2] mailbox   KEYS[3] history   KEYS[4] meta   KEYS[5] turns
-- KEYS[6] turn_index   KEYS[7] events   KEYS[8] outbox
-- A: token, turn_id, status ("completed" | "failed"), output (object or null),
--    error (object or null), messages (JSON documents, as strings, for history),
--    tail (data of a last "delta" event: text not yet streamed; "" for none),
--    webhook (the event type to tell webhook receivers of, e.g. "turn.completed"; ""
--    for none: an outbox message is written only here, only when the commit is made),
--    now_ms, session_ttl_ms, lock_ttl_ms, events_ttl_ms, channel
-- Returns {"OK", released (0|1), record JSON} | {"NOT_OWNER"} | {"DUPLICATE"}
--       | {"OUT_OF_ORDER"}. Only "OK" writes anything. The mailbox is in acceptance
-- order, so "the next expected turn" is exactly its head.
if redis.call("GET", KEYS[1]) ~= A.token then
  return {"NOT_OWNER"}
end
local raw = redis.call("HGET", KEYS[5], A.turn_id)
local rec = raw and cjson.decode(raw)
if not rec or (rec.status ~= "queued" and rec.status ~= "running") then
  return {"DUPLICATE"}
end
if redis.call("LINDEX", KEYS[2], 0) ~= A.turn_id then
  return {"OUT_OF_ORDER"}
end

if rec.kind == "clear" then
  redis.call("DEL", KEYS[3])
elseif A.status == "completed" and #A.messages > 0 then
  redis.call("RPUSH", KEYS[3], unpack(A.messages))
end
rec.status = A.status
rec.output = A.output
rec.error = A.error
rec.finished_at = A.now_ms
local encoded = cjson.encode(rec)
redis.call("HSET", KEYS[5], A.turn_id, encoded)
redis.call("HSET", KEYS[4], "done_seq", rec.seq, "updated_at", A.now_ms)
redis.call("LPOP", KEYS[2])

if A.tail ~= "" then
  emit(KEYS[7], A.turn_id, "delta", A.tail)
end
emit(KEYS[7], A.turn_id, "final", encoded)
redis.call("XTRIM", KEYS[7], "MINID", string.format("%.0f", A.now_ms - A.events_ttl_ms))
if A.webhook ~= "" then
  redis.call("RPUSH", KEYS[8], cjson.encode({
    msg = "msg_" .. A.turn_id, type = A.webhook, turn_id = A.turn_id, at = A.now_ms}))
  redis.call("PEXPIRE", KEYS[8], A.session_ttl_ms)
end

expire(A.session_ttl_ms, 3, 6)
if redis.call("LLEN", KEYS[2]) == 0 then
  redis.call("DEL", KEYS[1])
  return {"OK", 1, encoded}
end
redis.call("PEXPIRE", KEYS[2], A.session_ttl_ms)
redis.call("PEXPIRE", KEYS[1], A.lock_ttl_ms)
return {"OK", 0, encoded}
