-- extend: renew the session lock's lease if this token still holds it.
--
-- KEYS[1] lock
-- ARGV[1] token  ARGV[2] lease (ms)
-- Returns 1 renewed | 0 lost (another token holds it, or it expired).
if redis.call("GET", KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call("PEXPIRE", KEYS[1], ARGV[2])
return 1
