-- route: outbox messages have been handled, in order; each one that is still the
-- outbox's head is dropped and the replies it owes the session's messaging chat join the
-- reply lane, in the same step. A message another sender already dropped is skipped with
-- its replies, so two senders that read the same outbox never queue a reply twice.
--
-- KEYS[1] outbox   KEYS[2] replies
-- A: handled (list of {msg = the outbox message's "msg", replies = JSON documents as
--    strings}), ttl_ms
-- Returns the length of the reply lane.
for _, done in ipairs(A.handled) do
  local head = redis.call("LINDEX", KEYS[1], 0)
  if head and cjson.decode(head).msg == done.msg then
    redis.call("LPOP", KEYS[1])
    if #done.replies > 0 then
      redis.call("RPUSH", KEYS[2], unpack(done.replies))
      redis.call("PEXPIRE", KEYS[2], A.ttl_ms)
    end
  end
end
return redis.call("LLEN", KEYS[2])
