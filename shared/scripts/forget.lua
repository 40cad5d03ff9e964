-- forget: remove a session from the active index unless it was touched since it was read.
--
-- KEYS[1] active   sorted set of "tenant:session", scored by last acceptance (ms)
-- ARGV[1] member   ARGV[2] the score the caller read
-- Returns 1 removed | 0 kept (the score changed: a turn was accepted meanwhile).
if redis.call("ZSCORE", KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call("ZREM", KEYS[1], ARGV[1])
  return 1
end
return 0
