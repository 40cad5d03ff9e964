-- claim: take up to A.limit members of a schedule that are due, for A.lease_ms: each gets
-- the score now + lease, so no other sender takes it meanwhile (one that dies lets it
-- come due again).
--
-- KEYS[1] schedule   sorted set scored by when a member is due (ms)
-- A: now_ms, lease_ms, limit
-- Returns {member, claimed score, member, claimed score, ...}.
local due = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", A.now_ms, "LIMIT", 0, A.limit)
local until_ms = A.now_ms + A.lease_ms
local out = {}
for i = 1, #due do
  redis.call("ZADD", KEYS[1], until_ms, due[i])
  out[#out + 1] = due[i]
  out[#out + 1] = string.format("%.0f", until_ms)
end
return out
