-- forget: remove a session from the active index unless it was touched since it was read.
--
-- KEYS[1] active   sorted set of "tenant:session", scored by last acceptance (ms)
-- A: member, score (exactly as the caller read it)
-- Returns 1 removed | 0 kept (the score changed: a turn was accepted meanwhile).
if redis.call("ZSCORE", KEYS[1], A.member) == A.score then
  redis.call("ZREM", KEYS[1], A.member)
  return 1
end
return 0
