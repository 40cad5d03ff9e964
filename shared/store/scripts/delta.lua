-- delta: append streamed model text (or the news that a try's text is abandoned) to the
-- session's events, only for the lock holder (a worker that lost its lock never writes,
-- not even a token delta).
--
-- KEYS[1] lock   KEYS[2] events
-- A: token, turn_id, type ("delta" | "reset"), data (JSON: attempt, try[, text]), channel
-- Returns 1 appended | 0 not the holder (nothing written).
if redis.call("GET", KEYS[1]) ~= A.token then
  return 0
end
-- What emit does, less its PEXPIRE: the stream's expiry was set when the turn began and is set
-- again when it commits (one command less per delta; a process sends thousands a second).
local id = redis.call("XADD", KEYS[2], "*", "turn", A.turn_id, "type", A.type, "data", A.data)
redis.call("PUBLISH", A.channel, id .. " " .. A.turn_id .. " " .. A.type .. " " .. A.data)
return 1
