-- delta: append streamed model text to a turn's event stream, only for the lock holder
-- (a worker that lost its lock never writes, not even a token delta).
--
-- KEYS[1] lock     KEYS[2] events
-- ARGV[1] token    ARGV[2] event data JSON ({"attempt", "try", "text"})
-- Returns 1 appended | 0 not the holder (nothing written).
if redis.call("GET", KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call("XADD", KEYS[2], "*", "type", "delta", "data", ARGV[2])
return 1
