-- begin: take (or keep) the session lock, then the mailbox head (with the coalesced turns
-- that follow it: its group) and the history window.
--
-- KEYS[1] lock   KEYS[2] mailbox   KEYS[3] history   KEYS[4] meta   KEYS[5] turns
-- KEYS[6] turn_index   KEYS[7] events   KEYS[8] woken
-- A: token, lock_ttl_ms, window (messages, 0 = none), max_group, now_ms, session_ttl_ms,
--    events_ttl_ms, channel
-- Returns {"BUSY"} when another token holds the lock;
--         {"EMPTY"} when nothing is pending (the lock is then not held by this token);
--         {"WAIT", ms, generation} when the group waits out its debounce (the lock is
--         then held);
--         {"OK", head JSON, generation, span, members JSON, message...} otherwise: the
--         head and the coalesced turns after it (members: a JSON array of records; span:
--         the mailbox entries the group covers) marked running with the attempt counted,
--         a "running" event appended for each (after a "reset" of the previous attempt's
--         text when an earlier attempt started it), the session's expiry refreshed (a
--         long-running session never expires under its worker). generation: the
--         session's stop generation (stop_attempt), which the commit must still see.
-- Cancelled turns whose message is kept (an interrupt) leave the head here, their message
-- appended to history, so kept messages land in acceptance order, around clears.
local holder = redis.call("GET", KEYS[1])
if holder and holder ~= A.token then
  return {"BUSY"}
end
-- A worker is here: any outstanding sweeper wake-up has done its job; reset the backoff.
redis.call("DEL", KEYS[8])
redis.call("HDEL", KEYS[4], "rewakes")

local function joins(other)
  return is_active(other) and other.kind == "message" and other.strategy == "coalesce"
end

while true do
  local head = redis.call("LINDEX", KEYS[2], 0)
  if not head then
    if holder then
      redis.call("DEL", KEYS[1])
    end
    return {"EMPTY"}
  end
  local raw = redis.call("HGET", KEYS[5], head)
  local rec = raw and cjson.decode(raw)
  if is_active(rec) then
    local group = {rec}
    local span = 1
    if rec.kind == "message" and A.max_group > 1 then
      local ids = redis.call("LRANGE", KEYS[2], 1, A.max_group - 1)
      if #ids > 0 then
        local raws = redis.call("HMGET", KEYS[5], unpack(ids))
        for i = 1, #ids do
          local other = raws[i] and cjson.decode(raws[i])
          if not joins(other) then
            break
          end
          group[#group + 1] = other
          span = i + 1
        end
      end
    end
    local due = 0
    for _, member in ipairs(group) do
      if member.strategy == "coalesce" then
        due = math.max(due, member.created_at + (tonumber(member.debounce_ms) or 0))
      end
    end
    redis.call("SET", KEYS[1], A.token, "PX", A.lock_ttl_ms)
    -- A turn still "running" while no worker holds the lock was started by a worker that
    -- died (a worker that stops its own attempt keeps the lock, and one that waits or
    -- leaves has set it back to queued): count it, once, as a crash.
    local waiting = due > A.now_ms
    for _, member in ipairs(group) do
      if member.status == "running" then
        if not holder then
          member.crashes = (member.crashes or 0) + 1
        end
        if waiting then  -- nothing runs while the group waits: say so
          member.status = "queued"
          redis.call("HSET", KEYS[5], member.id, cjson.encode(member))
          emit(KEYS[7], member.id, "status",
            cjson.encode({status = "queued", seq = member.seq, attempt = member.attempt}))
        end
      end
    end
    local generation = tonumber(redis.call("HGET", KEYS[4], "stops")) or 0
    if waiting then
      return {"WAIT", due - A.now_ms, generation}
    end
    rec.group = #group
    local members = {}
    for i, member in ipairs(group) do
      member.attempt = member.attempt + 1
      member.status = "running"
      member.started_at = A.now_ms
      local encoded = cjson.encode(member)
      redis.call("HSET", KEYS[5], member.id, encoded)
      if member.attempt > 1 then  -- an earlier attempt's text of this turn will not be kept
        emit(KEYS[7], member.id, "reset", cjson.encode({attempt = member.attempt - 1}))
      end
      emit(KEYS[7], member.id, "status",
        cjson.encode({status = "running", seq = member.seq, attempt = member.attempt}))
      if i > 1 then
        members[#members + 1] = encoded
      end
    end
    expire(A.session_ttl_ms, 2, 6)
    local reply = {"OK", cjson.encode(rec), generation, span, "[" .. table.concat(members, ",") .. "]"}
    if A.window > 0 then
      local messages = redis.call("LRANGE", KEYS[3], -A.window, -1)
      for i = 1, #messages do
        reply[#reply + 1] = messages[i]
      end
    end
    return reply
  end
  -- The record is gone or finished: it can never run, so it leaves the queue (with its
  -- message, if it was kept).
  if rec and rec.keep then
    local content = (rec.input or {}).content or ""
    redis.call("RPUSH", KEYS[3], cjson.encode({type = "human",
      data = {type = "human", content = content, id = rec.id .. ":user"}}))
  end
  redis.call("LPOP", KEYS[2])
end
