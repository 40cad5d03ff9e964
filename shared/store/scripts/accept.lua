-- accept: record a new turn (a message or a session clear), settle what it does to the
-- turns already pending (its double-texting strategy), and queue it on the mailbox.
--
-- KEYS[1] meta   KEYS[2] mailbox   KEYS[3] turns   KEYS[4] turn_index   KEYS[5] history
-- KEYS[6] events   KEYS[7] lock   KEYS[8] idem (unused when A.fingerprint is "")
-- KEYS[9] outbox
-- A: turn (the queued record, without seq and events_from: the id of its first event;
--    strategy and debounce_ms null unless the request chose them), fingerprint (of the
--    request, "" without an Idempotency-Key), idem_ttl_ms, max_pending, max_history
--    (messages the history may hold, counting two for each pending message turn),
--    existing_only (refuse an unknown session), default_strategy, default_debounce_ms
--    (the tenant's or deployment's, used when neither the request nor the session chose),
--    max_group (turns one coalesced model call answers at most), announce_cancel (write
--    turn.cancelled webhook events), member, control, now_ms, session_ttl_ms,
--    events_ttl_ms, channel
-- Returns {"OK", turn id, seq, lock held (0|1), events_from, strategy, cancelled (JSON:
--         [[turn id, characters of its message], ...] of the turns this one cancelled)}
--       | {"REPLAY", turn id} | {"CONFLICT", turn id} | {"FULL", pending count}
--       | {"HISTORY_FULL", messages} | {"NOT_FOUND"} | {"BUSY", the pending turn's id}
--
-- Strategies (what a message does to the session's queued and running message turns):
-- enqueue: nothing, it waits its turn. reject: refused (BUSY) if there is one.
-- interrupt: they are cancelled, their messages kept in history. rollback: they are
-- cancelled and their messages dropped. coalesce: it joins the last one's group, which
-- one model call answers (worker side: begin.lua); a running group starts again with it.
local rec = A.turn
if A.fingerprint ~= "" then
  local seen = redis.call("GET", KEYS[8])
  if seen then
    local sep = string.find(seen, "|", 1, true)
    local old_id = string.sub(seen, 1, sep - 1)
    if string.sub(seen, sep + 1) == A.fingerprint then
      return {"REPLAY", old_id}
    end
    return {"CONFLICT", old_id}
  end
end
if A.existing_only and redis.call("EXISTS", KEYS[1]) == 0 then
  return {"NOT_FOUND"}
end
local pending = redis.call("LLEN", KEYS[2])
if pending >= A.max_pending then
  return {"FULL", pending}
end
if rec.kind == "message" then
  -- A clear is always accepted: it is how a full session is emptied.
  local held = redis.call("LLEN", KEYS[5]) + 2 * pending
  if held + 2 > A.max_history then
    return {"HISTORY_FULL", held}
  end
end

local function unset(value)
  return value == nil or value == cjson.null
end
if rec.kind == "message" then
  local chosen = redis.call("HMGET", KEYS[1], "strategy", "debounce_ms")
  if unset(rec.strategy) then
    rec.strategy = chosen[1] or A.default_strategy
  end
  if unset(rec.debounce_ms) then
    rec.debounce_ms = tonumber(chosen[2]) or A.default_debounce_ms
  end
  if rec.strategy ~= "coalesce" then
    rec.debounce_ms = 0
  end
else
  rec.strategy = "enqueue"
  rec.debounce_ms = 0
end

-- The turns this one acts on: the active entries of the mailbox, oldest first.
local active = {}
if rec.strategy ~= "enqueue" and pending > 0 then
  local ids = redis.call("LRANGE", KEYS[2], 0, -1)
  local raws = redis.call("HMGET", KEYS[3], unpack(ids))
  for i = 1, #ids do
    local other = raws[i] and cjson.decode(raws[i])
    if is_active(other) then
      active[#active + 1] = other
    end
  end
end

local cancelled = {}
local stop = false
if rec.strategy == "reject" and #active > 0 then
  return {"BUSY", active[1].id}
elseif rec.strategy == "interrupt" or rec.strategy == "rollback" then
  local keep = rec.strategy == "interrupt"
  local reason = keep and "interrupted" or "rolled_back"
  for _, other in ipairs(active) do
    if other.kind == "message" then
      local input = other.input or {}
      cancelled[#cancelled + 1] = {other.id, chars(input.content or "")}
      if cancel_turn(KEYS[3], KEYS[6], KEYS[9], other, reason, rec.id, keep,
          A.announce_cancel) then
        stop = true
      end
      if not keep then
        redis.call("LREM", KEYS[2], 1, other.id)
      end
    end
  end
elseif rec.strategy == "coalesce" and #active > 0 then
  local last = active[#active]
  if last.kind == "message" and last.status == "running" then
    -- The running group began with the head; it takes this message only while not full.
    local head = active[1]
    if (head.group or 1) < A.max_group then
      stop = true
    end
  end
end

local seq = redis.call("HINCRBY", KEYS[1], "next_seq", 1)
redis.call("HSETNX", KEYS[1], "created_at", A.now_ms)
redis.call("HSET", KEYS[1], "updated_at", A.now_ms)
rec.seq = seq
rec.events_from = emit(KEYS[6], rec.id, "status",
  cjson.encode({status = rec.status, seq = seq, attempt = 0}))
redis.call("HSET", KEYS[3], rec.id, cjson.encode(rec))
redis.call("ZADD", KEYS[4], seq, rec.id)
redis.call("RPUSH", KEYS[2], rec.id)
expire(A.session_ttl_ms, 1, 5)
if A.fingerprint ~= "" then
  redis.call("SET", KEYS[8], rec.id .. "|" .. A.fingerprint, "PX", A.idem_ttl_ms)
end
if stop then
  stop_attempt(KEYS[1], A.member)
end
if #cancelled > 0 then
  redis.call("HINCRBY", KEYS[1], "finished", #cancelled)
end
return {"OK", rec.id, seq, redis.call("EXISTS", KEYS[7]), rec.events_from, rec.strategy,
  cjson.encode(cancelled)}
