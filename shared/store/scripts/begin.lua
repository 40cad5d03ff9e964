-- begin: take (or keep) the session lock, then the mailbox head and the history window.
--
-- KEYS[1] lock   KEYS[2] mailbox   KEYS[3] history   KEYS[4] meta   KEYS[5] turns
-- KEYS[6] turn_index   KEYS[7] events   KEYS[8] woken
-- A: token, lock_ttl_ms, window (messages, 0 = none), now_ms, session_ttl_ms,
--    events_ttl_ms, channel
-- Returns {"BUSY"} when another token holds the lock;
--         {"EMPTY"} when nothing is pending (the lock is then not held by this token);
--         {"OK", record JSON, message...} otherwise: the head marked running with its
--         attempt counted, a "running" event appended (after a "reset" of the previous
--         attempt's text when an earlier worker started it), the session's expiry
--         refreshed (a long-running session never expires under its worker).
local holder = redis.call("GET", KEYS[1])
if holder and holder ~= A.token then
  return {"BUSY"}
end
-- A worker is here: any outstanding sweeper wake-up has done its job; reset the backoff.
redis.call("DEL", KEYS[8])
redis.call("HDEL", KEYS[4], "rewakes")

while true do
  local head = redis.call("LINDEX", KEYS[2], 0)
  if not head then
    if holder then
      redis.call("DEL", KEYS[1])
    end
    return {"EMPTY"}
  end
  local raw = redis.call("HGET", KEYS[5], head)
  local rec = raw and cjson.decode(raw)
  if rec and (rec.status == "queued" or rec.status == "running") then
    redis.call("SET", KEYS[1], A.token, "PX", A.lock_ttl_ms)
    rec.attempt = rec.attempt + 1
    rec.status = "running"
    rec.started_at = A.now_ms
    local encoded = cjson.encode(rec)
    redis.call("HSET", KEYS[5], head, encoded)
    if rec.attempt > 1 then  -- an earlier worker's text of this turn will not be kept
      emit(KEYS[7], head, "reset", cjson.encode({attempt = rec.attempt - 1}))
    end
    emit(KEYS[7], head, "status",
      cjson.encode({status = "running", seq = rec.seq, attempt = rec.attempt}))
    expire(A.session_ttl_ms, 2, 6)
    local reply = {"OK", encoded}
    if A.window > 0 then
      local messages = redis.call("LRANGE", KEYS[3], -A.window, -1)
      for i = 1, #messages do
        reply[#reply + 1] = messages[i]
      end
    end
    return reply
  end
  -- The record is gone or already finished: it can never run, so it leaves the queue.
  redis.call("LPOP", KEYS[2])
end
