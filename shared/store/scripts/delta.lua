-- delta: append streamed model text to the session's events, only for the lock holder
-- (a worker that lost its lock never writes, not even a token delta).
--
-- KEYS[1] lock   KEYS[2] events
-- A: token, turn_id, data (JSON: attempt, try, text), events_ttl_ms, channel
-- Returns 1 appended | 0 not the holder (nothing written).
if redis.call("GET", KEYS[1]) ~= A.token then
  return 0
end
emit(KEYS[2], A.turn_id, "delta", A.data)
return 1
