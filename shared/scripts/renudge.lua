-- renudge: decide whether the sweeper may send a stalled session another wake-up.
-- At most one re-nudge is outstanding per session; each one waits twice as long as the
-- last (up to a cap) until a worker begins a turn there (begin.lua resets the backoff),
-- so a backed-up queue is never flooded.
--
-- KEYS[1] nudged   string: present while a re-nudge is outstanding
-- KEYS[2] meta     hash: renudges (how many since a worker last began)
-- ARGV[1] base wait (ms)   ARGV[2] longest wait (ms)
-- Returns the re-nudge number (> 0) when one should be sent now, else 0.
if redis.call("EXISTS", KEYS[1]) == 1 then
  return 0
end
local n = redis.call("HINCRBY", KEYS[2], "renudges", 1)
local wait = tonumber(ARGV[1]) * 2 ^ math.min(n - 1, 20)
wait = math.min(wait, tonumber(ARGV[2]))
redis.call("SET", KEYS[1], n, "PX", math.floor(wait))
return n
