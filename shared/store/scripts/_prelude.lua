-- Prepended to every script by the loader. Every script takes one argument, ARGV[1]: its
-- named arguments as one JSON document (A below), so a new field never renumbers others.
local A = cjson.decode(ARGV[1])

-- Append one event to the session's stream (kept events_ttl_ms after its last write) and
-- announce it on the session's channel as "<entry id> <turn id> <type> <data>".
local function emit(stream, turn_id, kind, data)
  local id = redis.call("XADD", stream, "*", "turn", turn_id, "type", kind, "data", data)
  redis.call("PEXPIRE", stream, A.events_ttl_ms)
  redis.call("PUBLISH", A.channel, id .. " " .. turn_id .. " " .. kind .. " " .. data)
  return id
end

local function expire(ttl_ms, first, last)
  for i = first, last do
    redis.call("PEXPIRE", KEYS[i], ttl_ms)
  end
end
