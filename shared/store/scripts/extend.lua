-- extend: renew the session lock's lease if this token still holds it, and say whether
-- the attempt it runs was stopped meanwhile (the stop notice may have been missed).
--
-- KEYS[1] lock   KEYS[2] meta
-- A: token, ttl_ms, generation (the stop generation the holder's attempt began in)
-- Returns 1 renewed | 2 renewed, but the attempt was stopped | 0 lost (another token holds
-- it, or it expired).
if redis.call("GET", KEYS[1]) ~= A.token then
  return 0
end
redis.call("PEXPIRE", KEYS[1], A.ttl_ms)
if (tonumber(redis.call("HGET", KEYS[2], "stops")) or 0) ~= A.generation then
  return 2
end
return 1
