-- rewake: decide whether the sweeper may send a stalled session another wake-up.
-- At most one is outstanding per session; each waits twice as long as the last (up to a
-- cap) until a worker begins a turn there (begin.lua resets the backoff), so a backed-up
-- queue is never flooded.
--
-- KEYS[1] woken   string: present while a sweeper wake-up is outstanding
-- KEYS[2] meta    hash: rewakes (how many since a worker last began)
-- A: base_ms, max_ms
-- Returns the wake-up's number (> 0) when one should be sent now, else 0.
if redis.call("EXISTS", KEYS[1]) == 1 then
  return 0
end
local n = redis.call("HINCRBY", KEYS[2], "rewakes", 1)
local wait = math.min(A.base_ms * 2 ^ math.min(n - 1, 20), A.max_ms)
redis.call("SET", KEYS[1], n, "PX", math.floor(wait))
return n
