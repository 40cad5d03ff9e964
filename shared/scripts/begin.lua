-- begin: take (or keep) the session lock, then the mailbox head and the history window.
--
-- KEYS[1] lock      string: holder token
-- KEYS[2] mailbox   list of pending turn ids, head first
-- KEYS[3] history   list of message JSON documents, oldest first
-- KEYS[4] meta      hash: next_seq, done_seq, renudges (sweeper backoff)
-- KEYS[5] nudged    string: present while a sweeper re-nudge is outstanding
-- ARGV[1] token     ARGV[2] lock TTL (ms)   ARGV[3] history window (messages, 0 = none)
-- ARGV[4] now (ms)  ARGV[5] turn key prefix  ARGV[6] events key prefix
-- ARGV[7] session TTL (ms)
-- (ARGV[5..6] + a turn id are keys of this session: same hash tag, same cluster slot.)
-- Returns {"BUSY"} when another token holds the lock;
--         {"EMPTY"} when nothing is pending (the lock is then not held by this token);
--         {"OK", turn id, kind, seq, input JSON, attempt, message...} otherwise, with
--         the turn marked running, a "running" event appended and the session's TTLs
--         refreshed (a long-running session never expires under its worker).
local holder = redis.call("GET", KEYS[1])
if holder and holder ~= ARGV[1] then
  return {"BUSY"}
end
-- A worker is here: any outstanding re-nudge has done its job; reset the backoff.
redis.call("DEL", KEYS[5])
redis.call("HDEL", KEYS[4], "renudges")

while true do
  local head = redis.call("LINDEX", KEYS[2], 0)
  if not head then
    if holder then
      redis.call("DEL", KEYS[1])
    end
    return {"EMPTY"}
  end
  local turn_key = ARGV[5] .. head
  local fields = redis.call("HMGET", turn_key, "status", "kind", "seq", "input")
  local status = fields[1]
  if status == "queued" or status == "running" then
    redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
    local attempt = redis.call("HINCRBY", turn_key, "attempt", 1)
    redis.call("HSET", turn_key, "status", "running", "started_at", ARGV[4])
    local events_key = ARGV[6] .. head
    redis.call("XADD", events_key, "*", "type", "status",
      "data", cjson.encode({status = "running", seq = tonumber(fields[3]), attempt = attempt}))
    local ttl = ARGV[7]
    redis.call("PEXPIRE", KEYS[2], ttl)
    redis.call("PEXPIRE", KEYS[3], ttl)
    redis.call("PEXPIRE", KEYS[4], ttl)
    redis.call("PEXPIRE", turn_key, ttl)
    redis.call("PEXPIRE", events_key, ttl)
    local reply = {"OK", head, fields[2], fields[3], fields[4], attempt}
    local window = tonumber(ARGV[3])
    if window > 0 then
      local messages = redis.call("LRANGE", KEYS[3], -window, -1)
      for i = 1, #messages do
        reply[#reply + 1] = messages[i]
      end
    end
    return reply
  end
  -- The record expired or already finished: it can never run, so it leaves the queue.
  redis.call("LPOP", KEYS[2])
end
