-- reply_once: queue a reply to a platform message that became no turn (a sticker, a
-- photo), once however often the platform delivers that message.
--
-- KEYS[1] seen   KEYS[2] replies
-- A: reply (JSON document as a string), ttl_ms
-- Returns 1 queued | 0 already answered.
if not redis.call("SET", KEYS[1], "1", "NX", "PX", A.ttl_ms) then
  return 0
end
redis.call("RPUSH", KEYS[2], A.reply)
redis.call("PEXPIRE", KEYS[2], A.ttl_ms)
return 1
