-- commit: fenced, exactly-once, in-order completion of the mailbox head, then release
-- the lock if nothing else is pending.
--
-- KEYS[1] lock     KEYS[2] mailbox   KEYS[3] history   KEYS[4] meta
-- KEYS[5] turn     KEYS[6] events
-- ARGV[1] token    ARGV[2] turn id   ARGV[3] seq   ARGV[4] status ("completed" | "failed")
-- ARGV[5] now (ms) ARGV[6] session TTL (ms)   ARGV[7] lock TTL (ms)
-- ARGV[8] output JSON or ""   ARGV[9] error JSON or ""
-- ARGV[10] data of a last "delta" event (unsent streamed text) or ""
-- ARGV[11] data of the "final" event (the whole result, so readers need no second read)
-- ARGV[12] how long the event stream is kept from now (ms)
-- ARGV[13..] message JSON documents to append to history
-- Returns {"OK", released (0|1)} | {"NOT_OWNER"} | {"DUPLICATE"} | {"OUT_OF_ORDER"}.
-- Only "OK" writes anything. The mailbox is in acceptance order, so "the next expected
-- turn" is exactly the mailbox head; done_seq records how far the session has come.
if redis.call("GET", KEYS[1]) ~= ARGV[1] then
  return {"NOT_OWNER"}
end
local turn = redis.call("HMGET", KEYS[5], "status", "kind")
local status, kind = turn[1], turn[2]
if status ~= "queued" and status ~= "running" then
  return {"DUPLICATE"}
end
if redis.call("LINDEX", KEYS[2], 0) ~= ARGV[2] then
  return {"OUT_OF_ORDER"}
end
local seq = tonumber(ARGV[3])

if kind == "clear" then
  redis.call("DEL", KEYS[3])
elseif ARGV[4] == "completed" and #ARGV > 12 then
  redis.call("RPUSH", KEYS[3], unpack(ARGV, 13))
end
redis.call("HSET", KEYS[5], "status", ARGV[4], "finished_at", ARGV[5])
if ARGV[8] ~= "" then
  redis.call("HSET", KEYS[5], "output", ARGV[8])
end
if ARGV[9] ~= "" then
  redis.call("HSET", KEYS[5], "error", ARGV[9])
end
redis.call("HSET", KEYS[4], "done_seq", seq)
redis.call("LPOP", KEYS[2])

if ARGV[10] ~= "" then
  redis.call("XADD", KEYS[6], "*", "type", "delta", "data", ARGV[10])
end
redis.call("XADD", KEYS[6], "*", "type", "final", "data", ARGV[11])

local ttl = ARGV[6]
redis.call("PEXPIRE", KEYS[3], ttl)
redis.call("PEXPIRE", KEYS[4], ttl)
redis.call("PEXPIRE", KEYS[5], ttl)
redis.call("PEXPIRE", KEYS[6], ARGV[12])
if redis.call("LLEN", KEYS[2]) == 0 then
  redis.call("DEL", KEYS[1])
  return {"OK", 1}
end
redis.call("PEXPIRE", KEYS[2], ttl)
redis.call("PEXPIRE", KEYS[1], ARGV[7])
return {"OK", 0}
