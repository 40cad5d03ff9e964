-- release: drop the session lock if this token holds it and (unless forced) the mailbox
-- is empty, so a pending turn is never left without a drainer.
--
-- KEYS[1] lock   KEYS[2] mailbox
-- A: token, force (true on error paths: release even with pending turns)
-- Returns 1 released | 0 not the holder | -1 refused: turns are pending.
if redis.call("GET", KEYS[1]) ~= A.token then
  return 0
end
if not A.force and redis.call("LLEN", KEYS[2]) > 0 then
  return -1
end
redis.call("DEL", KEYS[1])
return 1
