-- accept: record a new turn (or a session clear) and queue it on the session's mailbox.
--
-- KEYS[1] meta      hash: next_seq, done_seq
-- KEYS[2] mailbox   list of pending turn ids, head first
-- KEYS[3] turn      hash: the new turn record
-- KEYS[4] events    stream: the new turn's events
-- KEYS[5] idem      string: "<turn id>|<fingerprint>" for an Idempotency-Key (unused if ARGV[6] = "0")
-- KEYS[6] lock      string: the token of the worker draining this session, if any
-- KEYS[7] history   list: the session's messages (its TTL is refreshed)
-- ARGV[1] turn id   ARGV[2] kind ("message" | "clear")   ARGV[3] input JSON
-- ARGV[4] now (ms)  ARGV[5] session TTL (ms)   ARGV[6] "1" when an Idempotency-Key was given
-- ARGV[7] request fingerprint   ARGV[8] idempotency TTL (ms)   ARGV[9] max pending turns
-- ARGV[10] session id
-- Returns {"OK", turn id, seq, lock held (0|1)} | {"REPLAY", turn id} | {"CONFLICT", turn id}
--       | {"FULL", pending count}
local turn_id = ARGV[1]
if ARGV[6] == "1" then
  local seen = redis.call("GET", KEYS[5])
  if seen then
    local sep = string.find(seen, "|", 1, true)
    local old_id = string.sub(seen, 1, sep - 1)
    if string.sub(seen, sep + 1) == ARGV[7] then
      return {"REPLAY", old_id}
    end
    return {"CONFLICT", old_id}
  end
end

local pending = redis.call("LLEN", KEYS[2])
if pending >= tonumber(ARGV[9]) then
  return {"FULL", pending}
end

local seq = redis.call("HINCRBY", KEYS[1], "next_seq", 1)
redis.call("HSET", KEYS[3],
  "id", turn_id, "session_id", ARGV[10], "kind", ARGV[2], "seq", seq,
  "status", "queued", "input", ARGV[3], "attempt", 0, "created_at", ARGV[4])
redis.call("RPUSH", KEYS[2], turn_id)
redis.call("XADD", KEYS[4], "*", "type", "status",
  "data", cjson.encode({status = "queued", seq = seq, attempt = 0}))

local ttl = ARGV[5]
redis.call("PEXPIRE", KEYS[1], ttl)
redis.call("PEXPIRE", KEYS[2], ttl)
redis.call("PEXPIRE", KEYS[3], ttl)
redis.call("PEXPIRE", KEYS[4], ttl)
redis.call("PEXPIRE", KEYS[7], ttl)
if ARGV[6] == "1" then
  redis.call("SET", KEYS[5], turn_id .. "|" .. ARGV[7], "PX", ARGV[8])
end
local held = redis.call("EXISTS", KEYS[6])
return {"OK", turn_id, seq, held}
