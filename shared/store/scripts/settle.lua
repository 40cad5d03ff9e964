-- settle: the reply at the head of a lane was sent (or given up on): drop it; or it
-- will be tried again: store it with its attempts. Only when the head is still that
-- reply: a sender whose claim ran out cannot settle another sender's reply.
--
-- KEYS[1] replies
-- A: id, reply (the reply as it now stands, or "" to drop it)
-- Returns the lane's length after | -1 (the head is another reply, or none).
local head = redis.call("LINDEX", KEYS[1], 0)
if not head or cjson.decode(head).id ~= A.id then
  return -1
end
if A.reply == "" then
  redis.call("LPOP", KEYS[1])
else
  redis.call("LSET", KEYS[1], 0, A.reply)
end
return redis.call("LLEN", KEYS[1])
