-- extend: renew the session lock's lease if this token still holds it.
--
-- KEYS[1] lock
-- A: token, ttl_ms
-- Returns 1 renewed | 0 lost (another token holds it, or it expired).
if redis.call("GET", KEYS[1]) ~= A.token then
  return 0
end
redis.call("PEXPIRE", KEYS[1], A.ttl_ms)
return 1
