-- delta: append streamed model text (or the news that a try's text is abandoned) to the
-- session's events, only for the lock holder's current attempt (a worker that lost its
-- lock, or whose attempt was stopped, never writes, not even a token delta).
--
-- KEYS[1] lock   KEYS[2] events   KEYS[3] meta   KEYS[4] mailbox
-- A: token, generation, turn_id, type ("delta" | "reset"), data (JSON: attempt, try[,
--    text]), channel
-- Returns 1 appended | 0 not the holder | 2 the attempt was stopped | 3 the turn is no
-- longer at the head of the mailbox (committed already: a batch that was retried after
-- a network fault would land after its final event) | nothing written but for 1.
if redis.call("GET", KEYS[1]) ~= A.token then
  return 0
end
if (tonumber(redis.call("HGET", KEYS[3], "stops")) or 0) ~= A.generation then
  return 2
end
if redis.call("LINDEX", KEYS[4], 0) ~= A.turn_id then
  return 3
end
-- What emit does, less its PEXPIRE: the stream's expiry was set when the turn began and is set
-- again when it commits (one command less per delta; a process sends thousands a second).
local id = redis.call("XADD", KEYS[2], "*", "turn", A.turn_id, "type", A.type, "data", A.data)
redis.call("PUBLISH", A.channel, id .. " " .. A.turn_id .. " " .. A.type .. " " .. A.data)
return 1
