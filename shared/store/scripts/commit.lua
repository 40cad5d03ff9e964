-- commit: fenced, exactly-once, in-order completion of the mailbox head and its group;
-- then release the lock if nothing else is pending.
--
-- KEYS[1] lock   KEYS[2] mailbox   KEYS[3] history   KEYS[4] meta   KEYS[5] turns
-- KEYS[6] turn_index   KEYS[7] events   KEYS[8] outbox
-- A: token, generation (the stop generation begin answered), turn_id, members (ids of the
--    coalesced turns the head's model call also answered), span (mailbox entries the
--    group covers), status ("completed" | "failed"), output (object or null), error
--    (object or null), messages (JSON documents, as strings, for history), tail (data of
--    a last "delta" event: text not yet streamed; "" for none), webhook (the event type
--    to tell webhook receivers of, e.g. "turn.completed"; "" for none: an outbox message
--    is written only here, only when the commit is made), now_ms, session_ttl_ms,
--    lock_ttl_ms, events_ttl_ms, channel
-- Returns {"OK", released (0|1), record JSON} | {"NOT_OWNER"} | {"STOPPED"}
--       | {"DUPLICATE"} | {"OUT_OF_ORDER"}. Only "OK" writes anything. The mailbox is in
-- acceptance order, so "the next expected turn" is exactly its head. STOPPED: the attempt
-- was made void since it began (a cancel, or a message joined the group).
if redis.call("GET", KEYS[1]) ~= A.token then
  return {"NOT_OWNER"}
end
if (tonumber(redis.call("HGET", KEYS[4], "stops")) or 0) ~= A.generation then
  return {"STOPPED"}
end
local raw = redis.call("HGET", KEYS[5], A.turn_id)
local rec = raw and cjson.decode(raw)
if not is_active(rec) then
  return {"DUPLICATE"}
end
local covered = redis.call("LRANGE", KEYS[2], 0, A.span - 1)
local last = A.members[#A.members] or A.turn_id
if covered[1] ~= A.turn_id or covered[A.span] ~= last then
  return {"OUT_OF_ORDER"}
end
local group = {rec}
if #A.members > 0 then
  local raws = redis.call("HMGET", KEYS[5], unpack(A.members))
  for i = 1, #A.members do
    local member = raws[i] and cjson.decode(raws[i])
    if not is_active(member) then
      return {"STOPPED"}
    end
    group[#group + 1] = member
  end
end

if rec.kind == "clear" then
  redis.call("DEL", KEYS[3])
elseif A.status == "completed" and #A.messages > 0 then
  redis.call("RPUSH", KEYS[3], unpack(A.messages))
end
local docs = {}  -- each record as written, for its final event
for i, member in ipairs(group) do
  member.status = A.status
  member.output = A.output
  member.error = A.error
  member.finished_at = A.now_ms
  if i > 1 then
    member.answered_by = A.turn_id
  end
  local doc = cjson.encode(member)
  redis.call("HSET", KEYS[5], member.id, doc)
  docs[i] = doc
end
redis.call("HSET", KEYS[4], "done_seq", group[#group].seq, "updated_at", A.now_ms)
redis.call("HINCRBY", KEYS[4], "finished", #group)
redis.call("LTRIM", KEYS[2], A.span, -1)

if A.tail ~= "" then
  emit(KEYS[7], A.turn_id, "delta", A.tail)
end
for i, member in ipairs(group) do
  emit(KEYS[7], member.id, "final", docs[i])
end
redis.call("XTRIM", KEYS[7], "MINID", string.format("%.0f", A.now_ms - A.events_ttl_ms))
if A.webhook ~= "" then
  for _, member in ipairs(group) do
    announce(KEYS[8], member, A.webhook, A.now_ms, A.session_ttl_ms)
  end
end

expire(A.session_ttl_ms, 3, 6)
if redis.call("LLEN", KEYS[2]) == 0 then
  redis.call("DEL", KEYS[1])
  return {"OK", 1, docs[1]}
end
redis.call("PEXPIRE", KEYS[2], A.session_ttl_ms)
redis.call("PEXPIRE", KEYS[1], A.lock_ttl_ms)
return {"OK", 0, docs[1]}
